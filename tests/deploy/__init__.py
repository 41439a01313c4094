"""The deploy tier: a real systemd (PID 1 of a systemd-nspawn container on Debian 12) runs the README's
"Deploy on a VM" guide word for word, then the unit is checked for real. `python -m pytest -m deploy`; slow,
needs root, skips with a reason elsewhere."""
