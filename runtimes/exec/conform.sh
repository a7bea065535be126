#!/bin/sh
# Conformance script for the exec runtime (see docs/writing-a-runtime.md, section 4):
# with an empty Argument it runs until it is aborted; otherwise it reports its Argument,
# read octet for octet from stdin, as a result and ends normally.
hex=$(od -An -v -tx1 | tr -d ' \n')
if [ -z "$hex" ]; then
    while :; do sleep 0.05; done
fi
echo "result-hex $hex" >&3
