"""The protocol every Intercom program shares: the door (`intercom`), the server
(`intercom_server`), the command-line resident and the test clients.

Sans-I/O: wire messages, the call state machines and YAML loading, with no sockets, threads or
sleeps, so the rules of docs/protocol.md live in one place and are tested in milliseconds.
It depends on nothing but the standard library and PyYAML, so the server installs without the
door's media stack and the door without the server's.
"""
