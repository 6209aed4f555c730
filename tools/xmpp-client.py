#!/usr/bin/python3
"""A scriptable XMPP client for the capture tests, on slixmpp (Debian's
python3-slixmpp). Run it under proxychains4 to go through a SOCKS5 proxy.

    xmpp-client.py JID PASSWORD HOST PORT [notls]

`notls` skips STARTTLS even when the server offers it (a client that
connects to a test server with a self-signed certificate directly).

Reads commands on stdin, one per line (arguments tab-separated):
    msg<TAB>JID<TAB>TEXT      a chat message
    join<TAB>ROOM<TAB>NICK    join a multi-user chat room
    muc<TAB>ROOM<TAB>TEXT     a groupchat message
    quit
Writes one JSON object per line on stdout: {"event": "ready"} once online,
{"event": "message", "from", "type", "body"} per message received,
{"event": "error", "from", "id", "condition", "text"} per error stanza, and
{"event": "disconnected"} at the end. Text arrives JSON-escaped on stdin
too (`\\n`, `\\t`, `\\u…`), so any text can be sent.
"""

import asyncio
import json
import sys
import threading

import slixmpp


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.register_plugin("xep_0045")  # multi-user chat
        self["feature_mechanisms"].unencrypted_plain = True
        self.add_event_handler("session_start", self.on_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("groupchat_message", self.on_message)
        self.add_event_handler("disconnected", lambda _e: emit({"event": "disconnected"}))

    async def on_start(self, _event):
        self.send_presence()
        await self.get_roster()
        emit({"event": "ready", "jid": str(self.boundjid)})

    def on_message(self, msg):
        if msg["type"] == "error":
            emit({"event": "error", "from": str(msg["from"]), "id": msg["id"], "condition": msg["error"]["condition"],
                  "text": msg["error"]["text"]})
        elif msg["body"] and msg["type"] in ("chat", "normal", "groupchat", "headline"):
            emit({"event": "message", "from": str(msg["from"]), "type": msg["type"], "body": msg["body"]})

    def command(self, line):
        parts = line.rstrip("\n").split("\t")
        verb = parts[0]
        if verb == "msg":
            self.send_message(mto=parts[1], mbody=json.loads(parts[2]), mtype="chat")
        elif verb == "join":
            self.plugin["xep_0045"].join_muc(parts[1], parts[2])
        elif verb == "muc":
            self.send_message(mto=parts[1], mbody=json.loads(parts[2]), mtype="groupchat")
        elif verb == "quit":
            self.disconnect()


def main():
    jid, password, host, port = sys.argv[1:5]
    notls = sys.argv[5:6] == ["notls"]
    client = Client(jid, password)
    loop = asyncio.get_event_loop()

    def read_stdin():
        for line in sys.stdin:
            loop.call_soon_threadsafe(client.command, line)
        loop.call_soon_threadsafe(client.disconnect)

    threading.Thread(target=read_stdin, daemon=True).start()
    client.connect(address=(host, int(port)), force_starttls=False, disable_starttls=notls)
    loop.run_until_complete(client.disconnected)


if __name__ == "__main__":
    main()
