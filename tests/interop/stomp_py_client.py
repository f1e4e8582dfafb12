#!/usr/bin/python3
"""A manager written with stomp.py (an independent STOMP 1.2 implementation, Debian's
python3-stomp), as VDSM's clients talk: CONNECT, SUBSCRIBE to a private reply queue and to
jms.queue.events, SEND one-element JSON-RPC batches to jms.topic.vdsm_requests with reply-to.
Prints one JSON line per reply; exits non-zero on any STOMP ERROR or missing reply.

usage: stomp_py_client.py PORT CERT KEY CA METHOD PARAMS_JSON [METHOD PARAMS_JSON ...]
"""
import json
import queue
import sys
import uuid

import stomp

TIMEOUT = 20


class Replies(stomp.ConnectionListener):
    def __init__(self):
        self.messages = queue.Queue()
        self.errors = queue.Queue()

    def on_message(self, frame):
        self.messages.put(frame)

    def on_error(self, frame):
        self.errors.put(frame.body)


def connect(port, cert, key, ca, listener):
    """A connected stomp.py client. stomp.py (8.1 here) now and then presents no client
    certificate on its first TLS attempt (rvdsmd refuses it: "peer sent no certificates") and
    then waits out its own connect timeout; a fresh client on a new connection is tried, up
    to three times. rvdsmd's refusal is right each time; the flake is the client's."""
    host = [("localhost", port)]
    for attempt in range(3):
        conn = stomp.Connection12(host, heartbeats=(0, 0), try_loopback_connect=False, timeout=5)
        conn.set_ssl(for_hosts=host, key_file=key, cert_file=cert, ca_certs=ca)
        conn.set_listener("replies", listener)
        try:
            # VDSM's detector knows CONNECT, not STOMP (stomp.py's default for 1.2).
            conn.connect(wait=True, with_connect_command=True)
            return conn
        except stomp.exception.ConnectFailedException:
            conn.disconnect()
            if attempt == 2:
                raise


def main():
    port, cert, key, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    calls = list(zip(sys.argv[5::2], sys.argv[6::2]))
    listener = Replies()
    conn = connect(port, cert, key, ca, listener)
    reply_to = str(uuid.uuid4())
    conn.subscribe(destination=reply_to, id="replies", ack="auto")
    for method, params in calls:
        request_id = str(uuid.uuid4())
        body = json.dumps(
            [{"jsonrpc": "2.0", "method": method, "params": json.loads(params), "id": request_id}]
        )
        conn.send(
            destination="jms.topic.vdsm_requests",
            body=body,
            content_type="application/json",
            headers={"reply-to": reply_to, "ovirtCorrelationId": "stomp.py"},
        )
        try:
            frame = listener.messages.get(timeout=TIMEOUT)
        except queue.Empty:
            errors = []
            while not listener.errors.empty():
                errors.append(listener.errors.get())
            sys.exit(f"no reply to {method}; STOMP errors: {errors}")
        if frame.headers.get("destination") != reply_to:
            sys.exit(f"reply on the wrong destination: {frame.headers}")
        reply = json.loads(frame.body)
        if reply.get("id") != request_id:
            sys.exit(f"reply to another request: {reply}")
        print(json.dumps(reply), flush=True)
    conn.disconnect()


if __name__ == "__main__":
    main()
