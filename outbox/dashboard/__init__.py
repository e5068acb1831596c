"""``outbox dashboard``: a small web page for operators (the ``dashboard`` extra).

Server-rendered pages (Jinja, autoescaped) with a little vanilla JavaScript for the live
overview; every asset ships in this package, nothing is fetched at run time. Reads go
through :mod:`outbox.storage.overview` and :mod:`outbox.storage.admin`; every change goes
through the same admin calls as the ``outbox`` CLI, audited.

* :mod:`outbox.dashboard.security` -- the token, sessions, CSRF (standard library only);
* :mod:`outbox.dashboard.sampler` -- the overview's shared sampling and its chart;
* :mod:`outbox.dashboard.forms` -- selections of dead rows from form fields;
* :mod:`outbox.dashboard.app` -- the Starlette application (needs the extra);
* :mod:`outbox.dashboard.server` -- running it under uvicorn.
"""
