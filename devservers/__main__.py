"""``python -m devservers``: throwaway PostgreSQL and Redis until Ctrl-C."""

from devservers import main

main()
