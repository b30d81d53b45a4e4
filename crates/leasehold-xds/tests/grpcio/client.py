"""A grpcio client that resolves xds:/// targets through leasehold-xds.

Driven over stdin, one command a line:
    call TARGET N [KEY=VALUE]
                    make N unary Greeter.SayHello calls to TARGET, one after another,
                    with the request metadata KEY=VALUE if given
It answers each command with one JSON line on stdout:
    {"served": {"SERVER": COUNT, ...}, "failed": COUNT, "error": "LAST ERROR"}
where SERVER is the `server` field of each HelloReply. The messages are encoded by hand
(two string fields), so no generated stubs are needed.
"""

import json
import sys

import grpc

METHOD = "/greeter.Greeter/SayHello"
# HelloRequest { name: "xds" }: field 1, length-delimited.
REQUEST = b"\x0a\x03xds"


def varint(data, at):
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def reply_server(data):
    """The `server` field (2) of a HelloReply."""
    at = 0
    while at < len(data):
        key, at = varint(data, at)
        if key & 7 != 2:
            raise ValueError("unexpected wire type in HelloReply")
        length, at = varint(data, at)
        value = data[at : at + length]
        at += length
        if key >> 3 == 2:
            return value.decode()
    return ""


def main():
    channels = {}
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] != "call" or len(words) not in (3, 4):
            print(json.dumps({"error": "unknown command: " + line.strip()}), flush=True)
            continue
        target, count = words[1], int(words[2])
        metadata = None
        if len(words) == 4:
            key, _, value = words[3].partition("=")
            metadata = ((key, value),)
        if target not in channels:
            channel = grpc.insecure_channel(target)
            channels[target] = channel.unary_unary(
                METHOD, request_serializer=None, response_deserializer=None
            )
        call = channels[target]
        served, failed, error = {}, 0, ""
        for _ in range(count):
            try:
                reply = call(REQUEST, timeout=10, wait_for_ready=True, metadata=metadata)
                server = reply_server(reply)
                served[server] = served.get(server, 0) + 1
            except grpc.RpcError as e:
                failed += 1
                error = "%s: %s" % (e.code(), e.details())
        print(json.dumps({"served": served, "failed": failed, "error": error}), flush=True)


if __name__ == "__main__":
    main()
