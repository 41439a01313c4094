"""The documents match the server: every route the router serves is in docs/api.md and every route documented there
exists; the README's configuration table and the example config match the config table."""

import re
from pathlib import Path

import schedserver
from harness import Stack

ROOT = Path(__file__).resolve().parent.parent
API_DOC = ROOT / "docs" / "api.md"
README = ROOT / "README.md"


def documented_routes() -> set[tuple[str, str]]:
    """(METHOD, path with {params}) of every '### `METHOD /path`' heading of docs/api.md."""
    found = set()
    for line in API_DOC.read_text().splitlines():
        match = re.fullmatch(r"### `([A-Z]+) (/[^`?]*)`", line.strip())
        if match:
            found.add((match.group(1), re.sub(r"\{[^}]*\}", "{}", match.group(2))))
    return found


def served_routes(tmp_path) -> set[tuple[str, str]]:
    """(METHOD, path with {params}) of every route of the app, leaving out the catch-all for malformed ids."""
    stack = Stack(tmp_path)
    try:
        app = stack.server.app
        found = set()
        for route in app.routes:
            if ":re:" in route.rule:
                continue        # answers 404 for an id holding a slash: not a route of its own
            path = re.sub(r"<[a-z_]+>", "{}", route.rule)
            found.add((route.method, path))
        return found
    finally:
        stack.close()


def test_every_route_the_server_serves_is_documented_and_every_documented_route_is_served(tmp_path):
    served, documented = served_routes(tmp_path), documented_routes()
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"
    assert len(served) >= 10


def test_the_readme_configuration_table_lists_every_key_with_its_default_and_variable():
    text = README.read_text()
    for section, key, _, default, env in schedserver.CONFIG_TABLE:
        rows = [line for line in text.splitlines() if line.startswith(f"| `{section}.{key}` |")]
        assert len(rows) == 1, f"{section}.{key} is not in the README's table"
        if env:
            assert f"`{env}`" in rows[0], rows[0]
        if isinstance(default, (int, str)) and not isinstance(default, bool) and default not in ("",):
            shown = str(default) if not isinstance(default, str) or not default.startswith("./") else default
            assert f"`{shown}`" in rows[0], (rows[0], shown)


def test_the_readme_holds_no_development_history():
    text = README.read_text().lower()
    for phrase in ("this round", "this session", "until this round", "each in its own commit", "issue target"):
        assert phrase not in text, phrase
