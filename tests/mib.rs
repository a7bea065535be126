//! The Script MIB model (RFC 3165) over a real host and real runtime processes: every
//! table and rule, cited by object name. RowStatus semantics are RFC 2579's.

mod common;

use std::time::Duration;

use common::*;
use smx::mib::{
    Change, CodeCol, LaunchCol, LaunchOper, Mib, Principal, RowStatus, RunCol, ScriptCol,
    ScriptOper, SetError,
};
use smx::proto::{ExitCode, RunState};

const ADMIN: Principal = Principal::Admin;

fn mib() -> Mib {
    // Owners map to the invoking user here (no root needed): the OS profile is "self".
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    let h = host(&format!(
        "[[os_profile]]\nname = \"self\"\nuser = {me:?}\n\
         [[owner]]\nname = \"*\"\nos_profile = \"self\"\nruntime_profile = \"trusted\"\n"
    ));
    Mib::new(h, None).unwrap()
}

fn sc(owner: &str, name: &str, col: ScriptCol) -> Change {
    Change::Script {
        owner: owner.into(),
        name: name.into(),
        col,
    }
}

fn code(owner: &str, name: &str, index: u32, col: CodeCol) -> Change {
    Change::Code {
        owner: owner.into(),
        name: name.into(),
        index,
        col,
    }
}

fn la(owner: &str, name: &str, col: LaunchCol) -> Change {
    Change::Launch {
        owner: owner.into(),
        name: name.into(),
        col,
    }
}

fn run(owner: &str, name: &str, index: u32, col: RunCol) -> Change {
    Change::Run {
        owner: owner.into(),
        name: name.into(),
        index,
        col,
    }
}

fn exec_lang(m: &Mib) -> i64 {
    m.languages()
        .0
        .iter()
        .find(|l| l.runtime == "exec")
        .unwrap()
        .index as i64
}

/// RFC 3165 7.1: push a script through smCodeTable and enable it.
async fn push_script(m: &Mib, owner: &str, name: &str, body: &str) {
    let lang = exec_lang(m);
    let mut changes = vec![
        sc(
            owner,
            name,
            ScriptCol::RowStatus(RowStatus::CreateAndWait.number()),
        ),
        sc(owner, name, ScriptCol::Language(lang)),
        sc(owner, name, ScriptCol::Descr(b"test script".to_vec())),
    ];
    for (i, frag) in body.as_bytes().chunks(1024).enumerate() {
        changes.push(code(owner, name, i as u32 + 1, CodeCol::RowStatus(4)));
        changes.push(code(
            owner,
            name,
            i as u32 + 1,
            CodeCol::Text(frag.to_vec()),
        ));
    }
    m.set(&ADMIN, &changes).await.unwrap();
    m.set(
        &ADMIN,
        &[
            sc(
                owner,
                name,
                ScriptCol::RowStatus(RowStatus::Active.number()),
            ),
            sc(owner, name, ScriptCol::AdminStatus(1)),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        m.script(owner, name).unwrap().oper_status,
        ScriptOper::Enabled
    );
}

/// A launch button for `script`, enabled, created in one request as managers send it.
async fn add_launch(m: &Mib, owner: &str, name: &str, script: (&str, &str), extra: Vec<LaunchCol>) {
    let mut changes = vec![
        la(
            owner,
            name,
            LaunchCol::RowStatus(RowStatus::CreateAndGo.number()),
        ),
        la(
            owner,
            name,
            LaunchCol::ScriptOwner(script.0.as_bytes().to_vec()),
        ),
        la(
            owner,
            name,
            LaunchCol::ScriptName(script.1.as_bytes().to_vec()),
        ),
        la(owner, name, LaunchCol::AdminStatus(1)),
    ];
    changes.extend(extra.into_iter().map(|c| la(owner, name, c)));
    m.set(&ADMIN, &changes).await.unwrap();
}

async fn start(
    m: &Mib,
    owner: &str,
    name: &str,
    index: i64,
) -> Result<smx::host::RunInfo, (usize, SetError)> {
    m.set(&ADMIN, &[la(owner, name, LaunchCol::Start(index))])
        .await
        .map(|o| o.started.into_iter().next().unwrap())
}

#[tokio::test]
async fn push_launch_and_read_the_result() {
    let m = mib();
    push_script(&m, "ops", "hello.sh", "#!/bin/sh\necho \"hello $1\"\n").await;
    add_launch(
        &m,
        "ops",
        "hi",
        ("ops", "hello.sh"),
        vec![LaunchCol::Argument(b"world".to_vec())],
    )
    .await;
    let l = m.launch("ops", "hi").unwrap();
    assert_eq!(l.oper_status, LaunchOper::Enabled);
    let next = m.run_index_next("ops", "hi");
    let r = start(&m, "ops", "hi", next as i64).await.unwrap();
    assert_eq!(
        r.index, next,
        "smLaunchStart creates the run at the index it was set to"
    );
    let done = finish(m.host(), r.run_id, 10).await;
    assert_eq!(done.exit_code, ExitCode::NoError);
    assert_eq!(done.result.as_bytes(), b"hello world");
    assert_eq!(
        m.launch("ops", "hi").unwrap().row.start,
        next,
        "smLaunchStart reads the last index"
    );
}

#[tokio::test]
async fn run_index_next_is_fresh_on_every_read_and_in_use_indexes_are_refused() {
    let m = mib();
    push_script(&m, "ops", "sleep.sh", "#!/bin/sh\nsleep 30\n").await;
    add_launch(
        &m,
        "ops",
        "s",
        ("ops", "sleep.sh"),
        vec![LaunchCol::MaxRunning(5)],
    )
    .await;
    let a = m.run_index_next("ops", "s");
    let b = m.run_index_next("ops", "s");
    assert_ne!(
        a, b,
        "smLaunchRunIndexNext: each read returns a different value"
    );
    assert_eq!(m.run_index_next("ops", "nosuch"), 0);
    let r = start(&m, "ops", "s", 7).await.unwrap();
    assert_eq!(r.index, 7);
    // check 5: the index is in use.
    let e = start(&m, "ops", "s", 7).await.unwrap_err();
    assert!(
        matches!(&e.1, SetError::InconsistentValue(t) if t.contains("check 5")),
        "{e:?}"
    );
    // 0 generates one.
    let g = start(&m, "ops", "s", 0).await.unwrap();
    assert!(g.index != 7 && g.index != 0);
    m.host().shutdown().await;
}

#[tokio::test]
async fn start_checks_1_to_6_answer_inconsistent_value() {
    let m = mib();
    push_script(&m, "ops", "sleep.sh", "#!/bin/sh\nsleep 30\n").await;
    // check 2: no such script.
    add_launch(&m, "ops", "none", ("ops", "missing.sh"), vec![]).await;
    let e = start(&m, "ops", "none", 0).await.unwrap_err().1;
    assert!(e.message().contains("check 2"), "{e}");
    // check 1: the button is disabled.
    add_launch(
        &m,
        "ops",
        "off",
        ("ops", "sleep.sh"),
        vec![LaunchCol::AdminStatus(2)],
    )
    .await;
    let e = start(&m, "ops", "off", 0).await.unwrap_err().1;
    assert!(e.message().contains("check 1"), "{e}");
    // check 3: the script is not enabled.
    m.set(&ADMIN, &[sc("ops", "sleep.sh", ScriptCol::AdminStatus(2))])
        .await
        .unwrap();
    add_launch(&m, "ops", "dis", ("ops", "sleep.sh"), vec![]).await;
    let e = start(&m, "ops", "dis", 0).await.unwrap_err().1;
    assert!(e.message().contains("check 3"), "{e}");
    m.set(&ADMIN, &[sc("ops", "sleep.sh", ScriptCol::AdminStatus(1))])
        .await
        .unwrap();
    // check 4: another owner's script, without access to it.
    add_launch(&m, "bob", "b", ("ops", "sleep.sh"), vec![]).await;
    let bob = Principal::User("bob".into());
    let e = m
        .set(&bob, &[la("bob", "b", LaunchCol::Start(0))])
        .await
        .unwrap_err()
        .1;
    assert!(e.message().contains("check 4"), "{e}");
    // check 6: smLaunchMaxRunning (DEFVAL 1).
    start(&m, "ops", "dis", 0).await.unwrap();
    let e = start(&m, "ops", "dis", 0).await.unwrap_err().1;
    assert!(e.message().contains("check 6"), "{e}");
    assert_eq!(e.status(), 12, "inconsistentValue");
    m.host().shutdown().await;
}

#[tokio::test]
async fn row_status_transitions_follow_rfc_2579() {
    let m = mib();
    let rs = |v: RowStatus| sc("o", "s", ScriptCol::RowStatus(v.number()));
    // State A (no row): a column alone cannot create it; active/notInService are inconsistent.
    let e = m
        .set(&ADMIN, &[sc("o", "s", ScriptCol::Descr(b"x".to_vec()))])
        .await
        .unwrap_err();
    assert!(matches!(e, (0, SetError::NoCreation(_))), "{e:?}");
    for v in [RowStatus::Active, RowStatus::NotInService] {
        let e = m.set(&ADMIN, &[rs(v)]).await.unwrap_err();
        assert!(matches!(e.1, SetError::InconsistentValue(_)), "{v}: {e:?}");
    }
    // notReady can never be set.
    let e = m.set(&ADMIN, &[rs(RowStatus::NotReady)]).await.unwrap_err();
    assert!(matches!(e.1, SetError::WrongValue(_)), "{e:?}");
    // destroy of nothing is fine.
    m.set(&ADMIN, &[rs(RowStatus::Destroy)]).await.unwrap();
    // createAndGo without the required smScriptLanguage: inconsistentValue, nothing created.
    let e = m
        .set(&ADMIN, &[rs(RowStatus::CreateAndGo)])
        .await
        .unwrap_err();
    assert!(e.1.message().contains("smScriptLanguage"), "{e:?}");
    assert!(m.script("o", "s").is_none(), "nothing half-created");
    // createAndWait: notReady until complete, then notInService (B -> C).
    m.set(&ADMIN, &[rs(RowStatus::CreateAndWait)])
        .await
        .unwrap();
    assert_eq!(m.script("o", "s").unwrap().row_status, RowStatus::NotReady);
    let e = m.set(&ADMIN, &[rs(RowStatus::Active)]).await.unwrap_err();
    assert!(matches!(e.1, SetError::InconsistentValue(_)));
    m.set(&ADMIN, &[sc("o", "s", ScriptCol::Language(exec_lang(&m)))])
        .await
        .unwrap();
    assert_eq!(
        m.script("o", "s").unwrap().row_status,
        RowStatus::NotInService
    );
    // Existing rows: createAndGo/createAndWait are inconsistent.
    for v in [RowStatus::CreateAndGo, RowStatus::CreateAndWait] {
        assert!(matches!(
            m.set(&ADMIN, &[rs(v)]).await.unwrap_err().1,
            SetError::InconsistentValue(_)
        ));
    }
    m.set(&ADMIN, &[rs(RowStatus::Active)]).await.unwrap();
    m.set(&ADMIN, &[rs(RowStatus::NotInService)]).await.unwrap();
    m.set(&ADMIN, &[rs(RowStatus::Active)]).await.unwrap();
    // An enabled script cannot leave active nor change its source.
    m.set(
        &ADMIN,
        &[
            code("o", "s", 1, CodeCol::RowStatus(4)),
            code("o", "s", 1, CodeCol::Text(b"#!/bin/sh\n".to_vec())),
        ],
    )
    .await
    .unwrap_err();
    m.set(&ADMIN, &[sc("o", "s", ScriptCol::AdminStatus(3))])
        .await
        .unwrap();
    m.set(
        &ADMIN,
        &[
            code("o", "s", 1, CodeCol::RowStatus(4)),
            code("o", "s", 1, CodeCol::Text(b"#!/bin/sh\n".to_vec())),
        ],
    )
    .await
    .unwrap();
    m.set(&ADMIN, &[sc("o", "s", ScriptCol::AdminStatus(1))])
        .await
        .unwrap();
    assert_eq!(m.script("o", "s").unwrap().oper_status, ScriptOper::Enabled);
    for c in [
        rs(RowStatus::NotInService),
        rs(RowStatus::Destroy),
        sc("o", "s", ScriptCol::Source(b"file:///x".to_vec())),
    ] {
        let e = m.set(&ADMIN, std::slice::from_ref(&c)).await.unwrap_err();
        assert!(
            matches!(e.1, SetError::InconsistentValue(_)),
            "{c:?}: {e:?}"
        );
    }
    // Setting permanent always fails (smScriptStorageType).
    let e = m
        .set(&ADMIN, &[sc("o", "s", ScriptCol::StorageType(4))])
        .await
        .unwrap_err();
    assert!(matches!(e.1, SetError::InconsistentValue(_)));
    m.set(&ADMIN, &[sc("o", "s", ScriptCol::AdminStatus(2))])
        .await
        .unwrap();
    m.set(&ADMIN, &[rs(RowStatus::Destroy)]).await.unwrap();
    assert!(m.script("o", "s").is_none() && m.code(Some(("o", "s"))).is_empty());
}

#[tokio::test]
async fn one_request_is_applied_whole_or_not_at_all() {
    let m = mib();
    let lang = exec_lang(&m);
    // The last change is bad: nothing of the request happens.
    let e = m
        .set(
            &ADMIN,
            &[
                sc("o", "a", ScriptCol::RowStatus(4)),
                sc("o", "a", ScriptCol::Language(lang)),
                sc("o", "b", ScriptCol::RowStatus(4)),
                sc("o", "b", ScriptCol::Language(lang)),
                sc("o", "b", ScriptCol::AdminStatus(9)),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(e.0, 4, "the failing change is named by position");
    assert!(matches!(e.1, SetError::WrongValue(_)));
    assert!(m.scripts().is_empty());
    // Sizes: smScriptName is 1..32 octets, smScriptDescr 0..255.
    let e = m
        .set(&ADMIN, &[sc("o", &"n".repeat(33), ScriptCol::RowStatus(4))])
        .await
        .unwrap_err();
    assert!(matches!(e.1, SetError::NoCreation(_)));
    let e = m
        .set(
            &ADMIN,
            &[
                sc("o", "x", ScriptCol::RowStatus(5)),
                sc("o", "x", ScriptCol::Descr(vec![b'd'; 256])),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(e.1, SetError::WrongLength(_)));
}

#[tokio::test]
async fn max_completed_keeps_the_newest_and_control_fans_out() {
    let m = mib();
    push_script(&m, "ops", "quick.sh", "#!/bin/sh\necho done\n").await;
    push_script(&m, "ops", "sleep.sh", "#!/bin/sh\nsleep 30\n").await;
    add_launch(
        &m,
        "ops",
        "q",
        ("ops", "quick.sh"),
        vec![LaunchCol::MaxCompleted(2)],
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let r = start(&m, "ops", "q", 0).await.unwrap();
        finish(m.host(), r.run_id, 10).await;
        ids.push(r.index);
    }
    let left: Vec<u32> = m
        .host()
        .runs_of("ops", "q")
        .iter()
        .map(|r| r.index)
        .collect();
    assert_eq!(
        left,
        ids[2..].to_vec(),
        "smLaunchMaxCompleted: the oldest completed go first"
    );
    // smLaunchControl abort reaches every run of the button.
    add_launch(
        &m,
        "ops",
        "s",
        ("ops", "sleep.sh"),
        vec![LaunchCol::MaxRunning(3), LaunchCol::MaxCompleted(3)],
    )
    .await;
    let mut started = Vec::new();
    for _ in 0..3 {
        started.push(start(&m, "ops", "s", 0).await.unwrap());
    }
    for r in &started {
        eventually(10, "executing", || {
            m.host()
                .run(r.run_id)
                .is_some_and(|r| r.state == RunState::Executing)
        })
        .await;
    }
    m.set(&ADMIN, &[la("ops", "s", LaunchCol::Control(1))])
        .await
        .unwrap();
    for r in &started {
        let done = finish(m.host(), r.run_id, 10).await;
        assert_eq!(done.exit_code, ExitCode::Halted);
    }
    // Nothing left to abort: inconsistentValue.
    let e = m
        .set(&ADMIN, &[la("ops", "s", LaunchCol::Control(1))])
        .await
        .unwrap_err();
    assert!(matches!(e.1, SetError::InconsistentValue(_)));
    // smRunControl and smRunLifeTime on a terminated run.
    let idx = started[0].index;
    let e = m
        .set(&ADMIN, &[run("ops", "s", idx, RunCol::LifeTime(100))])
        .await
        .unwrap_err();
    assert!(matches!(e.1, SetError::InconsistentValue(_)));
    m.set(&ADMIN, &[run("ops", "s", idx, RunCol::ExpireTime(0))])
        .await
        .unwrap();
    eventually(5, "expire 0 removes the row", || {
        m.host().run_at("ops", "s", idx).is_none()
    })
    .await;
    m.host().shutdown().await;
}

#[tokio::test]
async fn autostart_starts_when_the_button_becomes_enabled() {
    let m = mib();
    add_launch(
        &m,
        "ops",
        "auto",
        ("ops", "later.sh"),
        vec![LaunchCol::AdminStatus(3)],
    )
    .await;
    assert!(
        m.host().runs_of("ops", "auto").is_empty(),
        "script missing: not enabled yet"
    );
    push_script(&m, "ops", "later.sh", "#!/bin/sh\necho started\n").await;
    eventually(5, "the autostart run", || {
        !m.host().runs_of("ops", "auto").is_empty()
    })
    .await;
    let r = &m.host().runs_of("ops", "auto")[0];
    assert_eq!(
        finish(m.host(), r.run_id, 10).await.result.as_bytes(),
        b"started"
    );
}

#[tokio::test]
async fn row_expire_time_removes_or_expires_the_button() {
    let m = mib();
    push_script(&m, "ops", "sleep.sh", "#!/bin/sh\nsleep 30\n").await;
    add_launch(&m, "ops", "gone", ("ops", "sleep.sh"), vec![]).await;
    m.set(&ADMIN, &[la("ops", "gone", LaunchCol::RowExpireTime(0))])
        .await
        .unwrap();
    eventually(5, "a button without runs is deleted", || {
        m.launch("ops", "gone").is_none()
    })
    .await;
    add_launch(&m, "ops", "busy", ("ops", "sleep.sh"), vec![]).await;
    let r = start(&m, "ops", "busy", 0).await.unwrap();
    m.set(&ADMIN, &[la("ops", "busy", LaunchCol::RowExpireTime(10))])
        .await
        .unwrap();
    eventually(5, "expired while a run exists", || {
        m.launch("ops", "busy")
            .is_some_and(|l| l.oper_status == LaunchOper::Expired)
    })
    .await;
    let e = m
        .set(&ADMIN, &[la("ops", "busy", LaunchCol::RowExpireTime(100))])
        .await
        .unwrap_err();
    assert!(
        matches!(e.1, SetError::InconsistentValue(_)),
        "no setting once expired"
    );
    m.host().abort(r.run_id).await.unwrap();
    m.set(
        &ADMIN,
        &[run("ops", "busy", r.index, RunCol::ExpireTime(0))],
    )
    .await
    .unwrap();
    eventually(5, "the expired button goes with its last run", || {
        m.launch("ops", "busy").is_none()
    })
    .await;
    let _ = Duration::ZERO;
}

/// nonVolatile rows and finished runs come back from the store; volatile ones do not;
/// a run that was executing ends genericError "the host restarted" (RFC 3165
/// smScriptStorageType, smLaunchStorageType; issue: no unread result is lost).
#[tokio::test]
async fn non_volatile_rows_and_finished_runs_survive_a_new_host() {
    let state = tempfile::tempdir().unwrap();
    let storage = tempfile::tempdir().unwrap();
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    let cfg = || {
        let mut c = config(&format!(
            "[[os_profile]]\nname = \"self\"\nuser = {me:?}\n\
             [[owner]]\nname = \"*\"\nos_profile = \"self\"\nruntime_profile = \"trusted\"\n"
        ));
        c.host.state_dir = Some(state.path().to_owned());
        c
    };
    let open = |c| {
        let h = smx::host::Host::new(c, smx::storage::Storage::open(storage.path()).unwrap());
        let store = smx::mib::store::Store::open(state.path()).unwrap();
        Mib::new(h, Some(store)).unwrap()
    };
    let m = open(cfg());
    push_script(&m, "ops", "keep.sh", "#!/bin/sh\necho \"kept $1\"\n").await;
    m.set(&ADMIN, &[sc("ops", "keep.sh", ScriptCol::StorageType(3))])
        .await
        .unwrap();
    push_script(&m, "ops", "lose.sh", "#!/bin/sh\necho lost\n").await;
    push_script(&m, "ops", "sleep.sh", "#!/bin/sh\nsleep 60\n").await;
    m.set(&ADMIN, &[sc("ops", "sleep.sh", ScriptCol::StorageType(3))])
        .await
        .unwrap();
    add_launch(
        &m,
        "ops",
        "k",
        ("ops", "keep.sh"),
        vec![
            LaunchCol::StorageType(3),
            LaunchCol::MaxCompleted(5),
            LaunchCol::Argument(b"x".to_vec()),
        ],
    )
    .await;
    add_launch(
        &m,
        "ops",
        "s",
        ("ops", "sleep.sh"),
        vec![LaunchCol::StorageType(3)],
    )
    .await;
    add_launch(&m, "ops", "v", ("ops", "lose.sh"), vec![]).await;
    let r1 = start(&m, "ops", "k", 41).await.unwrap();
    finish(m.host(), r1.run_id, 10).await;
    let long = start(&m, "ops", "s", 0).await.unwrap();
    eventually(10, "executing", || {
        m.host()
            .run(long.run_id)
            .is_some_and(|r| r.state == RunState::Executing)
    })
    .await;
    let langs = m.languages().0;
    // Everything queued is on disk; the old host is then left as if it died.
    m.flush().await;
    let old = m.clone();

    let m2 = open(cfg());
    assert_eq!(
        m2.languages().0,
        langs,
        "smLangIndex is stable across restarts"
    );
    assert!(
        m2.script("ops", "lose.sh").is_none() && m2.launch("ops", "v").is_none(),
        "volatile rows are gone"
    );
    eventually(5, "the saved script enabled again", || {
        m2.script("ops", "keep.sh")
            .is_some_and(|s| s.oper_status == ScriptOper::Enabled)
    })
    .await;
    let k = m2.launch("ops", "k").unwrap();
    assert_eq!(k.row.max_completed, 5);
    let kept = m2
        .host()
        .run_at("ops", "k", 41)
        .expect("finished run kept with its index");
    assert_eq!(kept.result.as_bytes(), b"kept x");
    let ended = m2
        .host()
        .run_at("ops", "s", long.index)
        .expect("the executing run's row");
    assert_eq!(
        (ended.state, ended.exit_code),
        (RunState::Terminated, ExitCode::GenericError)
    );
    assert!(ended.error.contains("restarted"), "{}", ended.error);
    // New runs get fresh indexes and RunIds.
    let r2 = start(&m2, "ops", "k", 0).await.unwrap();
    assert!(r2.index != 41 && r2.run_id > long.run_id);
    assert_eq!(
        finish(m2.host(), r2.run_id, 10).await.result.as_bytes(),
        b"kept x"
    );
    m2.host().shutdown().await;
    old.host().shutdown().await;
}

/// Found by a hostile review: a user could point an autostart button at another owner's
/// script and so run it (autostart has no principal to run smLaunchStart check 4 for).
/// The check now holds when the button names the script.
#[tokio::test]
async fn a_button_may_name_only_scripts_its_principal_may_read() {
    let m = mib();
    push_script(&m, "bob", "secret.sh", "#!/bin/sh\necho secret\n").await;
    let alice = Principal::User("alice".into());
    let e = m
        .set(
            &alice,
            &[
                la("alice", "steal", LaunchCol::RowStatus(4)),
                la("alice", "steal", LaunchCol::ScriptOwner(b"bob".to_vec())),
                la(
                    "alice",
                    "steal",
                    LaunchCol::ScriptName(b"secret.sh".to_vec()),
                ),
                la("alice", "steal", LaunchCol::AdminStatus(3)),
            ],
        )
        .await
        .unwrap_err();
    assert_eq!(e.0, 1);
    assert!(e.1.message().contains("check 4"), "{e:?}");
    assert!(m.launch("alice", "steal").is_none());
    assert!(m.host().runs_of("alice", "steal").is_empty());
}

/// Found by a hostile review: concurrent `launch_start`s with arguments ran with each
/// other's arguments. A start takes the button as its own request left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_keep_their_own_arguments() {
    let m = mib();
    push_script(&m, "ops", "echo.sh", "#!/bin/sh\necho \"$1\"\n").await;
    add_launch(
        &m,
        "ops",
        "e",
        ("ops", "echo.sh"),
        vec![LaunchCol::MaxRunning(1000), LaunchCol::MaxCompleted(1000)],
    )
    .await;
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                let arg = format!("arg-{i}");
                let r = m
                    .start_launch(&ADMIN, "ops", "e", None, Some(arg.as_str().into()))
                    .await
                    .unwrap();
                (arg, r)
            })
        })
        .collect();
    for t in tasks {
        let (arg, r) = t.await.unwrap();
        assert_eq!(
            r.argument.as_bytes(),
            arg.as_bytes(),
            "run {} took another request's argument",
            r.index
        );
    }
    m.host().shutdown().await;
}

/// Found by a hostile review: the control API's `launch` op rewrote a manager's launch
/// button (limits gone, a disabled script run anyway). It may reuse only its own.
#[tokio::test]
async fn the_launch_op_keeps_its_hands_off_the_managers_buttons() {
    let m = mib();
    push_script(&m, "ops", "s.sh", "#!/bin/sh\n").await;
    add_launch(
        &m,
        "ops",
        "mine",
        ("ops", "s.sh"),
        vec![LaunchCol::MaxRunning(3)],
    )
    .await;
    let e = m.may_launch_file("ops", "mine").unwrap_err();
    assert!(e.to_string().contains("use launch_start"), "{e}");
    assert!(m.may_launch_file("ops", "other").is_ok());
}

/// Found by a hostile review: smCodeTable rows were unbounded (36 MB from one user in ten
/// requests). They count against the owner's `[host] storage_quota` like stored scripts.
#[tokio::test]
async fn code_fragments_count_against_the_owners_quota() {
    let me = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    let mut c = config(&format!(
        "[[os_profile]]\nname = \"self\"\nuser = {me:?}\n\
         [[owner]]\nname = \"*\"\nos_profile = \"self\"\nruntime_profile = \"trusted\"\n"
    ));
    c.host.storage_quota = 2048;
    let m = Mib::new(
        smx::host::Host::new(c, smx::storage::Storage::temporary().unwrap()),
        None,
    )
    .unwrap();
    let lang = exec_lang(&m);
    let mut changes = vec![
        sc("o", "big", ScriptCol::RowStatus(5)),
        sc("o", "big", ScriptCol::Language(lang)),
    ];
    for i in 1..=3 {
        changes.push(code("o", "big", i, CodeCol::RowStatus(4)));
        changes.push(code("o", "big", i, CodeCol::Text(vec![b'#'; 1000])));
    }
    let e = m.set(&ADMIN, &changes).await.unwrap_err();
    assert!(
        matches!(&e.1, SetError::ResourceUnavailable(t) if t.contains("storage_quota")),
        "{e:?}"
    );
    assert!(
        m.script("o", "big").is_none() && m.code(None).is_empty(),
        "nothing half-created"
    );
    // Two fragments fit; another owner has a quota of its own.
    changes.truncate(6);
    m.set(&ADMIN, &changes).await.unwrap();
    let other: Vec<Change> = changes
        .iter()
        .map(|c| match c.clone() {
            Change::Script { name, col, .. } => Change::Script {
                owner: "p".into(),
                name,
                col,
            },
            Change::Code {
                name, index, col, ..
            } => Change::Code {
                owner: "p".into(),
                name,
                index,
                col,
            },
            c => c,
        })
        .collect();
    m.set(&ADMIN, &other).await.unwrap();
}
