"""Streaming exec: a command in a container whose stdin, stdout, stderr (or terminal) and signals travel
over websockets as they happen (see orchapi/execapi.py for the protocol)."""
