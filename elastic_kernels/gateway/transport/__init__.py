"""Message transport: kernel messages between a client's websocket and the kernel's ZeroMQ.

Modules:
    ``connection`` (websocket <-> ZeroMQ bridge), ``wsframes`` (client frames checked),
    ``wsjson`` (kernel messages spliced into JSON frames), ``writelimit`` (what a slow client
    may queue), ``msgsize`` (one message's size bound), ``offlinebuffer`` (output kept for a
    client that left), ``zmqguard`` (lost ZeroMQ wakeups).

The bottom of the gateway: imports no other gateway subpackage.
"""
