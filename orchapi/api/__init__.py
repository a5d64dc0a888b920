"""The agent API's request and response types, shared by the agent (which parses and checks what it is
sent with them) and its clients (which build requests and read answers with them), like LXD's
``shared/api``: one definition of each body, so both sides agree by construction.

- :mod:`orchapi.api.fields`: the checks a field of an untrusted body goes through (one message each);
- :mod:`orchapi.api.containers`: container state changes and renames;
- :mod:`orchapi.api.migration`: a migration's request and what the source answers;
- :mod:`orchapi.api.server`: what ``GET /1.0`` reports;
- :mod:`orchapi.endpoints`: one client method per endpoint, built on these.
"""
