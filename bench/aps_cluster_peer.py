"""APScheduler 3.x in the anchor experiment: one process of several sharing one SQLAlchemy job store.

    python bench/aps_cluster_peer.py DB_URL TARGET_URL SECONDS

Each process starts a BackgroundScheduler on SQLAlchemyJobStore(DB_URL) and adds the same job ("anchor", a GET
of TARGET_URL every second, replace_existing=True), as a team would when it runs the same program on two
machines for resilience; then it runs for SECONDS and exits. The target counts the requests.
"""

from __future__ import annotations

import sys
import time

import requests
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger


def hit(url: str) -> None:
    with requests.Session() as session:
        session.trust_env = False
        session.get(url, timeout=5)


def main() -> None:
    db_url, target, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    scheduler = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url=db_url)}, timezone="UTC")
    scheduler.start()
    scheduler.add_job(hit, CronTrigger(second="*", timezone="UTC"), args=[target], id="anchor",
                      replace_existing=True, misfire_grace_time=30, coalesce=True)
    print("ready", flush=True)
    time.sleep(seconds)
    scheduler.shutdown(wait=False)


if __name__ == "__main__":
    main()
