# netdev.py - summarise the network interface counters of /proc/net/dev.
#
# Argument: an interface name such as "eth0", or empty for all interfaces.
# Result: one line per interface, for example
#   "eth0 rx_bytes=1234 rx_packets=10 rx_errs=0 rx_drop=0 tx_bytes=5678 tx_packets=9 tx_errs=0 tx_drop=0"
# An interface that does not exist ends the run with invalidArgument.
# Works under the `restricted` profile (it only reads files).
import smx

FIELDS = ("bytes", "packets", "errs", "drop")


def read_counters():
    """{interface: {"rx_bytes": n, ...}} from /proc/net/dev (two header lines)."""
    counters = {}
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, data = line.partition(":")
            values = [int(v) for v in data.split()]
            entry = {"rx_" + k: values[i] for i, k in enumerate(FIELDS)}
            entry.update({"tx_" + k: values[8 + i] for i, k in enumerate(FIELDS)})
            counters[name.strip()] = entry
    return counters


wanted = smx.argument_text.strip()
counters = read_counters()
if wanted and wanted not in counters:
    raise smx.ArgumentError("no interface %r (have: %s)" % (wanted, " ".join(sorted(counters))))
names = [wanted] if wanted else sorted(counters)
smx.result("\n".join(
    name + " " + " ".join("%s=%d" % item for item in counters[name].items()) for name in names))
