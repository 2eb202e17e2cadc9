"""The built-in router: a small asyncio reverse proxy (:mod:`builtin_router.proxy`), the stable address
in front of the slots where nginx is absent. It is a program of its own: it imports nothing from the
rest of Switchyard, and the controller drives it over its command line and admin endpoint."""

HEALTH_PATH = "/__switchyard/router"  # every router answers it: the controller's check that it listens
