"""The reference for the read benchmark: bare Bottle routes served by waitress, answering precomputed JSON bodies.

    python bench/bare_app.py PORT THREADS ROUTE=BODYFILE [ROUTE=BODYFILE ...]

Each ROUTE (a path, e.g. /api/v1/curl/schedule) answers GET with the bytes of BODYFILE, read once at start, as
application/json; the query string and the Authorization header are ignored. Prints "ready" once listening on
127.0.0.1:PORT. No auth, no locks, no serialisation: what the stack itself costs, in its own process, with
waitress's logging set as schedserver sets it.
"""

import logging
import sys

import bottle
import waitress.server


def main() -> None:
    port, threads = int(sys.argv[1]), int(sys.argv[2])
    app = bottle.Bottle()
    for spec in sys.argv[3:]:
        route, path = spec.split("=", 1)
        with open(path, "rb") as f:
            body = f.read()

        def answer(body: bytes = body) -> bytes:
            bottle.response.content_type = "application/json"
            return body
        app.route(route, "GET", answer)
    # Logging as schedserver sets it: waitress's own messages at ERROR. Left at the default, waitress writes a
    # "Task queue depth is N" warning to stderr for nearly every request under load; each write lets go of the
    # interpreter lock that waitress's polling main thread otherwise keeps taking, and the same app measured
    # 2,200-2,600 req/s that way against 1,050-1,600 req/s with the warnings off. That would compare
    # schedserver with a side effect of log spam rather than with the stack.
    logging.getLogger("waitress").setLevel(logging.ERROR)
    server = waitress.server.create_server(app, host="127.0.0.1", port=port, threads=threads, ident="bare")
    print("ready", flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
