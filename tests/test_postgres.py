"""PostgreSQL storage and the cluster's claims, against a real PostgreSQL server (tests/pg.py).

The storage-level tests at the top run against both backends: the files in the data dir and PostgreSQL.
"""

import json
import threading
import time
import uuid

import psycopg
import pytest

import schedserver as S


def definition(n: int = 0) -> dict:
    return {"id": str(uuid.uuid4()), "cron": "0 * * * * *", "name": f"s{n}", "created_at": 1_700_000_000.0 + n}


def http_record(ref: str, run_id: str | None = None, status: str = "ok") -> dict:
    return {"ts": "2026-12-06T00:00:00.000Z", "schedule_id": ref, "run_id": run_id or str(uuid.uuid4()),
            "scheduled_at": "2026-12-06T00:00:00.000Z", "started_at": "2026-12-06T00:00:00.000Z",
            "status": status, "trigger": "cron", "attempt": 1}


# -- both backends ------------------------------------------------------------------------------------------------

@pytest.fixture(params=["files", "postgresql"])
def backend(request, tmp_path):
    """(definitions store, http runs log, reopen) for one backend; reopen() gives fresh objects on the same data."""
    if request.param == "files":
        def make():
            return (S.JournalStore(str(tmp_path / "curl-schedules.json")),
                    S.NdjsonLog(str(tmp_path / "curl-runs.log"), 10 * 1024 * 1024, 2))
        yield make
        return
    url = request.getfixturevalue("pg_url")
    dbs = []

    def make():
        db = S.PgDatabase(url)
        db.migrate()
        dbs.append(db)
        return S.PgDefinitions(db, "http", "test-replica"), S.PgRunLog(db, "http", S.RECORD_FIELDS["http"][:2])
    yield make
    for db in dbs:
        db.close()


def test_definitions_put_replace_and_delete_hold_across_a_reopen(backend):
    store, _ = backend()
    store.load()
    a, b, c = definition(1), definition(2), definition(3)
    for d in (a, b, c):
        store.put(d)
    store.put({**b, "name": "renamed"})
    store.delete(a["id"])
    again, _ = backend()
    loaded = {d["id"]: d for d in again.load()}
    assert set(loaded) == {b["id"], c["id"]}
    assert loaded[b["id"]]["name"] == "renamed"
    assert {d["id"] for d in again.items()} == {b["id"], c["id"]}


def test_runs_log_reads_newest_first_by_schedule_and_by_run_id_and_pages_with_positions(backend):
    _, runs_log = backend()
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    records = [http_record(one if n % 2 else two) for n in range(30)]
    for record in records:
        runs_log.append(record)
    newest = [r["run_id"] for r, _ in runs_log.read_newest(contains=one.encode()) if r["schedule_id"] == one]
    assert newest == [r["run_id"] for r in reversed(records) if r["schedule_id"] == one]
    # A page ends at a position; the next page starts just before it, with nothing twice and nothing left out.
    page, seen = None, []
    while True:
        batch = []
        for record, position in runs_log.read_newest(contains=one.encode(), before=page):
            if record["schedule_id"] == one:
                batch.append(record["run_id"])
                page = position
                if len(batch) == 4:
                    break
        seen += batch
        if len(batch) < 4:
            break
    assert seen == newest
    target = records[7]["run_id"]
    found = [r for r, _ in runs_log.read_newest(contains=target.encode()) if r["run_id"] == target]
    assert len(found) == 1 and found[0] == records[7]
    assert [r["run_id"] for r in runs_log.read_after(None)] == [r["run_id"] for r in records]


def test_runs_log_replays_only_what_came_after_a_saved_position(backend):
    _, runs_log = backend()
    ref = str(uuid.uuid4())
    first = [http_record(ref) for _ in range(5)]
    for record in first:
        runs_log.append(record)
    list(runs_log.read_after(None))
    position = runs_log.position()
    later = [http_record(ref) for _ in range(3)]
    for record in later:
        runs_log.append(record)
    _, reopened = backend()
    assert [r["run_id"] for r in reopened.read_after(position)] == [r["run_id"] for r in later]


# -- PostgreSQL only ----------------------------------------------------------------------------------------------

@pytest.fixture
def db(pg_url):
    database = S.PgDatabase(pg_url)
    database.migrate()
    yield database
    database.close()


def test_the_schema_is_versioned_and_migrating_again_or_from_several_replicas_at_once_changes_nothing(pg_url):
    errors = []

    def migrate():
        try:
            database = S.PgDatabase(pg_url)
            assert database.migrate() == len(S.PG_MIGRATIONS)
            database.close()
        except Exception as e:     # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(pg_url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schedserver_schema ORDER BY version")]
    assert versions == list(range(1, len(S.PG_MIGRATIONS) + 1))


def test_a_schema_newer_than_this_server_is_refused_with_a_clear_error(db, pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schedserver_schema VALUES (%s)", (len(S.PG_MIGRATIONS) + 1,))
    with pytest.raises(S.StartupError, match="newer than this schedserver knows"):
        S.PgDatabase(pg_url).migrate()


def test_an_unreachable_database_is_a_storage_error_that_does_not_show_the_password():
    db = S.PgDatabase("postgresql://u:s3cret-pw@127.0.0.1:1/x", connect_timeout=2)
    with pytest.raises(S.StorageError) as caught:
        db.execute("SELECT 1")
    assert "s3cret-pw" not in caught.value.message
    assert "u:***@127.0.0.1:1" in caught.value.message


def test_storage_url_must_be_postgresql_and_is_treated_as_a_secret():
    with pytest.raises(S.ConfigError) as caught:
        S.load_config(environ={"SCHEDSERVER_STORAGE_URL": "mysql://u:pw@h/x"})
    assert "storage.url" in str(caught.value) or "SCHEDSERVER_STORAGE_URL" in str(caught.value)
    assert "pw" not in str(caught.value)
    config = S.load_config(environ={"SCHEDSERVER_STORAGE_URL": "postgresql://u:pw@h/x"})
    assert config.storage_url == "postgresql://u:pw@h/x"
    assert S.load_config(environ={}).storage_url is None


def test_a_record_is_stored_once_per_run_id_whoever_writes_it_first(db):
    runs_log = S.PgRunLog(db, "http", S.RECORD_FIELDS["http"][:2])
    ref, run_id = str(uuid.uuid4()), str(uuid.uuid4())
    applied = []
    runs_log.append(http_record(ref, run_id, "interrupted"), then=lambda: applied.append(1))
    runs_log.append(http_record(ref, run_id, "ok"), then=lambda: applied.append(2))
    stored = [r for r, _ in runs_log.read_newest(contains=ref.encode())]
    assert [r["status"] for r in stored] == ["interrupted"]
    assert applied == [1]


def polled(runs_log: S.PgRunLog) -> list[dict]:
    taken: list[dict] = []
    runs_log.poll(taken.append)
    return taken


def test_poll_hands_over_other_writers_records_once_in_order_and_waits_for_a_row_not_yet_committed(db, pg_url):
    clock = [0.0]
    reader = S.PgRunLog(db, "http", S.RECORD_FIELDS["http"][:2], monotonic=lambda: clock[0])
    writer = S.PgRunLog(S.PgDatabase(pg_url), "http", S.RECORD_FIELDS["http"][:2])
    ref = str(uuid.uuid4())
    assert polled(reader) == []
    # A row numbered first but committed last: the reader must not pass it by.
    slow = psycopg.connect(pg_url)
    slow.execute("INSERT INTO runs (kind, ref, run_id, line) VALUES ('http', %s, 'late', %s)",
                 (ref, json.dumps(http_record(ref, "late"))))
    quick = [http_record(ref) for _ in range(3)]
    for record in quick:
        writer.append(record)
    assert [r["run_id"] for r in polled(reader)] == [r["run_id"] for r in quick]
    slow.commit()
    slow.close()
    assert [r["run_id"] for r in polled(reader)] == ["late"]
    assert polled(reader) == []
    assert reader.position()["seq"] == max(r[0] for r in db.execute("SELECT seq FROM runs"))
    # A number never committed (a rolled-back row) is passed after the wait.
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO runs (kind, ref, run_id, line) VALUES ('http', %s, 'gone', '{}')", (ref,))
        conn.rollback()
    after = http_record(ref)
    writer.append(after)
    assert [r["run_id"] for r in polled(reader)] == [after["run_id"]]
    stuck = reader.position()["seq"]
    clock[0] += S.PgRunLog.GAP_WAIT + 1
    polled(reader)
    assert reader.position()["seq"] > stuck


def job(ref: str | None = None, kind: str = "http") -> S.Job:
    return S.Job(key=S.job_key(kind, ref or str(uuid.uuid4())), kind=kind, ref=ref or str(uuid.uuid4()),
                 cron=S.parse_cron("* * * * * *"), tz=S.load_timezone("UTC"), target=None)


def claim(cluster: S.Cluster, the_job, slot: float, trigger: str = "cron", attempt: int = 1,
          exclusive: bool = False) -> tuple[str, str]:
    """One slot's claim: (outcome, run id)."""
    [outcome] = cluster.claim([(the_job, slot, trigger, attempt, exclusive)])
    return outcome


def test_each_slot_is_claimed_by_exactly_one_of_many_replicas_racing_for_it(db, pg_url):
    clusters = [S.Cluster(S.PgDatabase(pg_url)) for _ in range(6)]
    for cluster in clusters:
        cluster.join()
    the_job = job()
    wins: list[tuple[int, float]] = []
    barrier = threading.Barrier(len(clusters))

    def race(n: int, cluster: S.Cluster) -> None:
        barrier.wait()
        for slot in range(1_800_000_000, 1_800_000_040):
            if claim(cluster, the_job, float(slot))[0] == "run":
                wins.append((n, slot))
    threads = [threading.Thread(target=race, args=(n, c)) for n, c in enumerate(clusters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(slot for _, slot in wins) == list(range(1_800_000_000, 1_800_000_040))
    # A retry attempt of a slot is a claim of its own.
    assert claim(clusters[0], the_job, 1_800_000_000.0, "retry", 2)[0] == "run"
    assert claim(clusters[1], the_job, 1_800_000_000.0, "retry", 2)[0] == "taken"


def test_under_overlap_forbid_a_slot_is_skipped_while_another_live_replica_runs_the_schedule(db):
    a, b = S.Cluster(db), S.Cluster(db)
    a.join()
    b.join()
    the_job = job()
    outcome, running = claim(a, the_job, 1_800_000_000.0, exclusive=True)
    assert outcome == "run"
    outcome, skipped = claim(b, the_job, 1_800_000_001.0, exclusive=True)
    assert outcome == "skipped"
    assert db.execute("SELECT state FROM claims WHERE run_id = %s", (skipped,)) == [("skipped",)]
    assert claim(b, the_job, 1_800_000_002.0)[0] == "run"        # allow/replace
    a.settle(running, "done")
    assert claim(b, the_job, 1_800_000_003.0, exclusive=True)[0] == "run"


def test_missed_slots_are_recorded_only_for_the_slots_no_replica_claimed(db):
    a, b = S.Cluster(db), S.Cluster(db)
    the_job = job()
    base = time.time() // 1 - 100
    for slot in (base + 1, base + 2, base + 5):
        assert claim(a, the_job, slot)[0] == "run"
    missed = b.claim_missed(the_job, [base + n for n in range(8)])
    assert missed == [base, base + 3, base + 4, base + 6, base + 7]
    assert a.claim_missed(the_job, [base + n for n in range(8)]) == []
    # Slots older than the claims kept are never claimed as missed (their claims may be pruned already).
    assert b.claim_missed(the_job, [base - S.CLAIMS_KEPT_SECONDS - 10]) == []


def test_first_replica_spreads_schedules_over_the_live_replicas_and_exactly_one_goes_first(db):
    clusters = [S.Cluster(db) for _ in range(3)]
    for cluster in clusters:
        cluster.join()
    for cluster in clusters:
        cluster.heartbeat()
    keys = [f"http:{uuid.uuid4()}" for _ in range(600)]
    counts = [sum(cluster.first(key) for key in keys) for cluster in clusters]
    assert sum(counts) == len(keys)
    assert min(counts) > 120, counts      # about a third each


def test_runs_in_flight_on_a_replica_whose_lease_ran_out_are_recorded_interrupted_once(db, tmp_path):
    dead, survivor = S.Cluster(db, lease=2), S.Cluster(db, lease=2)
    dead.join()
    survivor.join()
    logs = {kind: S.PgRunLog(db, kind, S.RECORD_FIELDS[kind][:2]) for kind in ("http", "script")}
    state = S.RunState(str(tmp_path / "run-state.json"), logs)
    survivor.recorder = S.Recorder(logs, state, None)
    the_job = job()
    outcome, run_id = claim(dead, the_job, 1_800_000_000.0, exclusive=True)
    assert outcome == "run"
    assert survivor.sweep() == 0                # its lease still holds
    db.execute("UPDATE replicas SET seen = now() - interval '3 seconds' WHERE id = %s", (dead.id,))
    assert survivor.sweep() == 1
    assert survivor.sweep() == 0
    records = [r for r, _ in logs["http"].read_newest(contains=the_job.ref.encode())]
    assert [(r["run_id"], r["status"]) for r in records] == [(run_id, "interrupted")]
    assert "lease" in records[0]["error"]
    # The lapsed replica's own record of that run, arriving late, changes nothing.
    logs["http"].append(http_record(the_job.ref, run_id, "ok"))
    assert [r["status"] for r, _ in logs["http"].read_newest(contains=the_job.ref.encode())] == ["interrupted"]
    # Nor may it claim a slot the survivor claimed meanwhile.
    assert claim(survivor, the_job, 1_800_000_001.0, exclusive=True)[0] == "run"
    assert claim(dead, the_job, 1_800_000_001.0, exclusive=True)[0] == "taken"


# -- replicas in one process, on a fake clock (tests/harness.py) ---------------------------------------------------

from harness import ADMIN, Stack  # noqa: E402


@pytest.fixture
def replicas(tmp_path, pg_url):
    """Two replicas (harness Stacks) on one database, each knowing the other is live."""
    made = []

    def make(n: int = 2, **config):
        from fakes import FakeClock
        clock = FakeClock("2025-01-10T12:00:00Z")
        for i in range(n):
            made.append(Stack(tmp_path / f"r{i}", clock, storage_url=pg_url, **config))
        for stack in made:
            stack.server.cluster.heartbeat()
        return made
    yield make
    for stack in made:
        stack.close()


def every_second(stack: Stack, **fields) -> str:
    body = {"cron": "* * * * * *", "request": {"url": "http://127.0.0.1:9/x", "method": "GET"}, **fields}
    return stack.app.post_json("/api/v1/curl/schedule", body, headers=ADMIN).json["id"]


def stored_runs(stack: Stack, schedule_id: str) -> list[dict]:
    return [r for r, _ in stack.server.logs["http"].read_newest(contains=schedule_id.encode())]


def test_two_replicas_ticking_together_run_each_slot_once_on_the_replica_that_goes_first(replicas):
    a, b = replicas()
    sid = every_second(a)
    b.server.http.refresh(sid)          # what its notice does
    first = a if a.server.cluster.first(f"http:{sid}") else b
    for _ in range(12):
        a.clock.advance(1)
        a.run_due()
        b.run_due()
    runs = stored_runs(a, sid)
    slots = [r["scheduled_at"] for r in runs]
    assert len(slots) == len(set(slots)) >= 10
    assert all(r["status"] == "ok" for r in runs)
    assert len(first.http_runner.runs) == len(runs)
    other = b if first is a else a
    assert other.http_runner.runs == []


def test_when_the_first_replica_is_gone_the_other_runs_each_slot_takeover_seconds_late_and_once(replicas):
    a, b = replicas()
    sid = every_second(a)
    b.server.http.refresh(sid)
    survivor = b if a.server.cluster.first(f"http:{sid}") else a
    start = survivor.clock()
    for _ in range(10):                 # only the survivor ticks: the first replica is stopped
        survivor.clock.advance(1)
        survivor.run_due()
    runs = survivor.http_runner.runs
    assert len(runs) >= 7
    assert [run.slot for run in runs] == sorted({run.slot for run in runs})
    assert all(run.started - run.slot == survivor.config.cluster_takeover_seconds for run in runs)
    assert runs[0].slot == start + 1


def test_slots_missed_while_every_replica_was_down_are_one_missed_record_not_one_per_replica(replicas):
    a, b = replicas()
    sid = every_second(a)
    b.server.http.refresh(sid)
    a.clock.advance(100)
    a.run_due()
    b.run_due()
    start = a.clock() - 100
    for _ in range(a.config.misfire_grace_seconds + 3):
        a.clock.advance(1)
        a.run_due()
        b.run_due()
    runs = stored_runs(a, sid)
    missed = [r for r in runs if r["status"] == "missed"]
    # The slots older than the misfire grace at once; the younger ones (another replica might still have run
    # them) once the grace is over: each slot counted once, by one replica.
    assert len(missed) == 2
    assert missed[-1]["count"] == 100 - a.config.misfire_grace_seconds
    ran = [r for r in runs if r["status"] == "ok"]
    assert sum(r["count"] for r in missed) + len(ran) == a.clock() - start


def test_a_change_on_one_replica_reaches_the_other_by_its_notice_and_by_a_resync_without_one(replicas):
    a, b = replicas()
    sid = every_second(a, name="one")
    b.server._on_notice({"kind": "http", "id": sid})
    assert b.app.get(f"/api/v1/curl/schedule/{sid}", headers=ADMIN).json["name"] == "one"
    assert b.server.scheduler.next_at(f"http:{sid}") is not None
    a.app.patch_json(f"/api/v1/curl/schedule/{sid}", {"name": "two", "cron": "0 0 * * * *"}, headers=ADMIN)
    b.server._on_notice({"kind": "http", "id": sid})
    got = b.app.get(f"/api/v1/curl/schedule/{sid}", headers=ADMIN).json
    assert (got["name"], got["cron"]) == ("two", "0 0 * * * *")
    a.app.patch_json(f"/api/v1/curl/schedule/{sid}/toggle", {"enabled": False}, headers=ADMIN)
    b.server.http.resync()              # no notice this time
    assert b.app.get(f"/api/v1/curl/schedule/{sid}", headers=ADMIN).json["enabled"] is False
    assert b.server.scheduler.next_at(f"http:{sid}") is None
    a.app.delete(f"/api/v1/curl/schedule/{sid}", headers=ADMIN)
    b.server.http.resync()
    b.app.get(f"/api/v1/curl/schedule/{sid}", headers=ADMIN, status=404)
    assert b.server.http.count() == 0


def test_a_replica_shows_the_runs_and_last_run_other_replicas_recorded(replicas):
    a, b = replicas()
    sid = every_second(a)
    for _ in range(3):
        a.clock.advance(1)
        a.run_due()
    b.server.http.refresh(sid)
    b.server._feed()
    got = b.app.get(f"/api/v1/curl/schedule/{sid}", headers=ADMIN).json
    assert len(got["history"]) >= 1 and got["last_run"] is not None
    assert got["history"] == a.app.get(f"/api/v1/curl/schedule/{sid}", headers=ADMIN).json["history"]
    runs = b.app.get(f"/api/v1/curl/schedule/{sid}/runs?limit=1", headers=ADMIN).json
    nxt = b.app.get(f"/api/v1/curl/schedule/{sid}/runs?limit=5&cursor={runs['next_cursor']}", headers=ADMIN).json
    assert [r["run_id"] for r in runs["items"] + nxt["items"]] == [h["run_id"] for h in got["history"]]


def test_prune_deletes_run_records_past_the_retention_and_old_claims_but_never_a_running_one(db):
    cluster = S.Cluster(db, retention_days=30)
    runs_log = S.PgRunLog(db, "http", S.RECORD_FIELDS["http"][:2])
    ref = str(uuid.uuid4())
    old, new = http_record(ref), http_record(ref)
    runs_log.append(old)
    runs_log.append(new)
    db.execute("UPDATE runs SET logged_at = now() - interval '31 days' WHERE run_id = %s", (old["run_id"],))
    the_job = job()
    _, kept = claim(cluster, the_job, 1_800_000_000.0)
    _, done = claim(cluster, the_job, 1_800_000_001.0)
    cluster.settle(done, "done")
    db.execute("UPDATE claims SET claimed_at = now() - interval '2 days'")
    assert cluster.prune() == 1
    assert [r["run_id"] for r, _ in runs_log.read_newest(contains=ref.encode())] == [new["run_id"]]
    assert [row[0] for row in db.execute("SELECT run_id FROM claims")] == [kept]


def test_a_script_fire_is_claimed_like_an_http_run_each_slot_fired_by_one_replica(replicas, tmp_path):
    shared = tmp_path / "shared-scripts"
    shared.mkdir()
    (shared / "tick.sh").write_text("#!/bin/sh\n# @schedule * * * * * *\necho tick\n")
    a, b = replicas(scripts_dir=str(shared))
    assert [s["scriptPath"] for s in a.scripts.list()["schedules"]] == \
        [s["scriptPath"] for s in b.scripts.list()["schedules"]] == [str(shared / "tick.sh")]
    for _ in range(4):
        a.clock.advance(1)
        a.run_due()
        b.run_due()
        assert a.wait_idle() and b.wait_idle()
    fires = [r for r, _ in a.server.logs["script"].read_newest() if r["scriptPath"] == "tick.sh"]
    assert len(fires) == 4 and len({r["ts"] for r in fires}) == 4
    assert all(r["status"] == "ok" for r in fires)


def test_migrate_copies_a_data_dir_into_an_empty_database_and_refuses_one_that_holds_data(tmp_path, pg_url, capsys):
    from fakes import FakeClock
    clock = FakeClock("2025-01-10T12:00:00Z")
    single = Stack(tmp_path / "single", clock)
    sid = every_second(single, name="kept")
    for _ in range(3):
        clock.advance(1)
        single.run_due()
    (single.scripts_dir / "a.sh").write_text("#!/bin/sh\n# @schedule 0 0 * * *\necho a\n")
    single.app.post_json("/api/v1/exec/schedules/reload", {}, headers=ADMIN)
    before = single.app.get(f"/api/v1/curl/schedule/{sid}", headers=ADMIN).json
    # A server still running on the data dir is refused: what it writes next would be lost.
    assert S.main(["migrate", "--to", pg_url, "--data-dir", str(single.data_dir)]) == 2
    assert "in use" in capsys.readouterr().err
    single.close()
    assert S.main(["migrate", "--to", pg_url, "--data-dir", str(single.data_dir)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"copied 1 http schedules, 1 script registrations and 3 run records from {single.data_dir} to {pg_url}")
    replica = Stack(tmp_path / "replica", clock, storage_url=pg_url)
    try:
        after = replica.app.get(f"/api/v1/curl/schedule/{sid}", headers=ADMIN).json
        assert (after["name"], after["history"], after["last_run"]) == ("kept", before["history"], before["last_run"])
        assert after["next_run"] == before["next_run"]
    finally:
        replica.close()
    assert S.main(["migrate", "--to", pg_url, "--data-dir", str(single.data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds schedserver data" in err


def test_slots_handed_over_together_are_claimed_in_one_statement_each_with_its_own_outcome(db):
    a, b = S.Cluster(db), S.Cluster(db)
    one, two = job(), job()
    claim(a, one, 1_800_000_000.0)
    claim(a, two, 1_800_000_001.0, "retry", 2)          # a retry's claim is not the cron slot's
    asks = [(one, 1_800_000_000.0, "cron", 1, False), (one, 1_800_000_001.0, "cron", 1, False),
            (two, 1_800_000_001.0, "cron", 1, False), (two, 1_800_000_001.0, "retry", 2, False),
            (two, 1_800_000_002.0, "cron", 1, False), (two, 1_800_000_002.0, "cron", 1, False)]
    outcomes = b.claim(asks)
    assert [outcome for outcome, _ in outcomes] == ["taken", "run", "run", "taken", "run", "taken"]
    assert len({run_id for _, run_id in outcomes}) == len(asks)
    won = {run_id for outcome, run_id in outcomes if outcome == "run"}
    assert {row[0] for row in db.execute("SELECT run_id FROM claims WHERE replica = %s", (b.id,))} == won
    assert b.claim([]) == []


def test_the_start_line_names_the_database_without_its_password(tmp_path, pg_url, caplog):
    url = pg_url.replace("postgres@", "postgres:not-a-real-pw@")
    with caplog.at_level("INFO", logger="schedserver"):
        stack = Stack(tmp_path / "r", storage_url=url)
        stack.close()
    text = caplog.text
    assert "this replica" in text and "postgres:***@127.0.0.1" in text
    assert "not-a-real-pw" not in text
