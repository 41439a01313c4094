"""Concurrency: many clients at once against the real server, and two servers pointed at one data dir.

Each client thread mutates only schedules it created itself, so the order of the acknowledged operations on
any one schedule is known; reads go to any schedule. The final state must equal what those operations say.
Every wait has a deadline; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field

import requests

from e2e_helpers import CURL_PATH, DEFAULT_TOKEN, ServerProcess, TargetServer, run_schedserver, schedserver_argv
from schedserver import TEMP_PREFIX
from stored import store_files, stored_definitions

CLIENTS = 16
CALLS_PER_CLIENT = 40
OWNED_LIMIT = 8
EVERY_SECOND = "*/1 * * * * *"
ONCE_A_YEAR = "0 0 0 1 1 *"
CLIENT_TIMEOUT = (5.0, 20.0)        # connect, read: 16 clients share 8 server threads on 2 cores


###############################################################################
# 16 clients, mixed calls
###############################################################################

@dataclass
class Client:
    """One client thread's view: its own schedules (id -> enabled), the ones it deleted, what went wrong."""

    index: int
    owned: dict[str, bool] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    requests: int = 0
    errors: list[str] = field(default_factory=list)


def run_client(client: Client, url: str, target_url: str, known_ids: list[str], known_lock: threading.Lock,
               start: threading.Barrier, rng: random.Random) -> None:
    """CALLS_PER_CLIENT random calls; every answer is checked against what this client knows for sure."""
    session = requests.Session()
    session.trust_env = False
    session.headers["Authorization"] = f"Bearer {DEFAULT_TOKEN}"
    base = url + CURL_PATH

    def call(method: str, path: str, expected: tuple[int, ...], **kwargs) -> dict | None:
        client.requests += 1
        try:
            answer = session.request(method, base + path, timeout=CLIENT_TIMEOUT, **kwargs)
        except requests.RequestException as e:
            client.errors.append(f"{method} {path}: {type(e).__name__}: {e}")
            return None
        if answer.status_code not in expected:
            client.errors.append(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
            return None
        return answer.json() | {"_status": answer.status_code}

    start.wait(30)
    try:
        for n in range(CALLS_PER_CLIENT):
            roll = rng.random()
            if not client.owned or (roll < 0.25 and len(client.owned) < OWNED_LIMIT):
                enabled = rng.random() < 0.7
                cron = EVERY_SECOND if rng.random() < 0.1 else ONCE_A_YEAR
                body = call("POST", "", (201,), json={"cron": cron, "enabled": enabled, "name": f"c{client.index}-{n}",
                                                      "request": {"url": f"{target_url}/c{client.index}", "timeout": 2}})
                if body is not None:
                    client.owned[body["id"]] = enabled
                    with known_lock:
                        known_ids.append(body["id"])
                    if body["enabled"] is not enabled:
                        client.errors.append(f"created with enabled={enabled}, answered {body}")
            elif roll < 0.40:
                body = call("GET", "", (200,))
                if body is not None:
                    listed = {item["id"]: item["enabled"] for item in body["items"]}
                    mine = {sid: listed.get(sid) for sid in client.owned.keys() | client.deleted}
                    wanted = {sid: client.owned.get(sid) for sid in mine}
                    if mine != wanted:
                        client.errors.append(f"list disagrees with this client's acknowledged operations: "
                                             f"{sorted(set(mine.items()) ^ set(wanted.items()))}")
            elif roll < 0.60:
                with known_lock:
                    sid = rng.choice(known_ids) if known_ids else "00000000-0000-4000-8000-000000000000"
                mine = sid in client.owned
                body = call("GET", f"/{sid}", (200,) if mine else (404,) if sid in client.deleted else (200, 404))
                if body is not None and mine and body["enabled"] is not client.owned[sid]:
                    client.errors.append(f"GET {sid}: enabled={body['enabled']}, acknowledged {client.owned[sid]}")
            elif roll < 0.85:
                sid = rng.choice(sorted(client.owned))
                if rng.random() < 0.5:
                    wanted, kwargs = not client.owned[sid], {}          # an empty body flips the state
                else:
                    wanted = rng.random() < 0.5
                    kwargs = {"json": {"enabled": wanted}}
                body = call("PATCH", f"/{sid}/toggle", (200,), **kwargs)
                if body is not None:
                    if body["enabled"] is not wanted:
                        client.errors.append(f"toggle {sid} to {wanted}: answered {body} (a lost update)")
                    client.owned[sid] = body["enabled"]
            else:
                sid = rng.choice(sorted(client.owned))
                if call("DELETE", f"/{sid}", (200,)) is not None:
                    del client.owned[sid]
                    client.deleted.add(sid)
    finally:
        session.close()


def listed_state(server: ServerProcess) -> dict[str, bool]:
    answer = server.api("GET", CURL_PATH, timeout=20)
    assert answer.status_code == 200, answer.text
    return {item["id"]: item["enabled"] for item in answer.json()["items"]}


def test_sixteen_clients_of_mixed_calls_get_no_errors_and_the_final_state_matches_their_acknowledged_operations(
        tmp_path, figure):
    data_dir, scripts_dir = tmp_path / "data", tmp_path / "scripts"
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    clients = [Client(n) for n in range(CLIENTS)]
    known_ids: list[str] = []
    known_lock = threading.Lock()
    start = threading.Barrier(CLIENTS)
    with TargetServer() as target, ServerProcess(data_dir, scripts_dir) as server:
        threads = [threading.Thread(target=run_client, name=f"concurrency-client-{c.index}",
                                    args=(c, server.url, target.url, known_ids, known_lock, start,
                                          random.Random(rng.random())))
                   for c in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), "a client hung past its request timeouts"
        listed = listed_state(server)
        assert "Traceback" not in server.stderr_text(), server.stderr_text()
        server.stop()

        model = {sid: enabled for c in clients for sid, enabled in c.owned.items()}
        stored = stored_definitions(data_dir)       # what the snapshot and the journal hold, as a start reads it
        with ServerProcess(data_dir, scripts_dir) as restarted:
            relisted = listed_state(restarted)

    errors = [f"client {c.index}: {e}" for c in clients for e in c.errors]
    total = sum(c.requests for c in clients)
    matches = listed == model == relisted == {d["id"]: d["enabled"] for d in stored}
    figure(f"reliability: concurrency {CLIENTS} threads, {total} requests, {len(errors)} errors, "
           f"final state {'matches' if matches else 'DIFFERS'}")
    assert not errors, f"seed {seed}:\n" + "\n".join(errors[:40])
    assert listed == model, f"seed {seed}: {sorted(set(listed.items()) ^ set(model.items()))}"
    in_file = {d["id"]: d["enabled"] for d in stored}
    assert in_file == model, f"seed {seed}: file vs model: {sorted(set(in_file.items()) ^ set(model.items()))}"
    assert relisted == model, f"seed {seed}: after a restart: {sorted(set(relisted.items()) ^ set(model.items()))}"
    assert total == CLIENTS * CALLS_PER_CLIENT and len(model) > CLIENTS


###############################################################################
# Two processes, one data dir
###############################################################################

def test_a_second_server_on_the_same_data_dir_exits_2_naming_it_and_the_first_keeps_answering_and_firing(tmp_path):
    data_dir, scripts_dir = tmp_path / "data", tmp_path / "scripts"
    with TargetServer() as target, ServerProcess(data_dir, scripts_dir) as first:
        created = first.api("POST", CURL_PATH, json={"cron": EVERY_SECOND, "request": {"url": target.url + "/first"}})
        assert created.status_code == 201, created.text
        schedule_id = created.json()["id"]
        assert target.wait_for(1, timeout=4, path="/first"), first.stderr_text()
        stored = store_files(data_dir)
        assert stored["curl-schedules.journal"] is not None, "the create was not written to the journal"
        in_progress = data_dir / f"{TEMP_PREFIX}curl-schedules.json-{os.getpid()}-1"    # as if the first were writing
        in_progress.write_bytes(b"a write in progress\n")
        not_ours = data_dir / "report.tmp-2024.txt"
        not_ours.write_bytes(b"someone else's file\n")

        started = time.monotonic()
        second = run_schedserver(schedserver_argv(data_dir, scripts_dir), timeout=15)
        refused_at = time.time()
        assert time.monotonic() - started < 10
        assert second.returncode == 2, second.stderr
        assert str(data_dir) in second.stderr and "in use" in second.stderr, second.stderr
        assert "listening" not in second.stderr

        assert first.returncode is None
        assert store_files(data_dir) == stored
        assert in_progress.exists(), "the refused server removed a temp file of the server that owns the data dir"
        assert first.api("GET", f"{CURL_PATH}/{schedule_id}").status_code == 200
        another = first.api("POST", CURL_PATH, json={"cron": ONCE_A_YEAR, "request": {"url": target.url + "/x"}})
        assert another.status_code == 201, another.text
        assert len(target.wait_for(2, timeout=4, path="/first", since=refused_at)) >= 2, first.stderr_text()
        assert first.stop() == 0, first.stderr_text()

    with ServerProcess(data_dir, scripts_dir) as third:         # the first let go of the data dir on exit
        assert set(listed_state(third)) == {schedule_id, another.json()["id"]}
        assert not in_progress.exists(), "a temp file left behind was not removed by the next owner"
        assert not_ours.read_bytes() == b"someone else's file\n"
