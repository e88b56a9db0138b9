"""``python -m infra.migrate``: upgrade the database named by ``SPLATPACK_DATABASE_URL`` to the
newest schema and exit (0 on success). Deployments run it once before the API and runners
start (compose: the ``migrate`` service; Kubernetes: an init container); running it again,
or from several places at once, is safe (``infra.db.run_migrations`` takes an advisory lock).
"""

from __future__ import annotations

import sys

from infra.db import normalize_url, run_migrations
from infra.settings import Settings


def main() -> int:
    settings = Settings()
    if not settings.database_url:
        print(
            "error: SPLATPACK_DATABASE_URL is not set; migrations need the server's database",
            file=sys.stderr,
        )
        return 2
    run_migrations(normalize_url(settings.database_url))
    print("database schema is up to date", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
