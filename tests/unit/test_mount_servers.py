"""The mount's HTTP servers are supervised: one that fails is served again, on the
same address (the PBX was told the port at login)."""

from __future__ import annotations

import socket

import trio

from recfs.service import mount
from recfs.service.supervise import Supervisor


async def test_a_failed_server_is_served_again_on_the_same_port():
    first = mount._bind("for the test", "127.0.0.1", 0)
    port = first.getsockname()[1]
    served: list[int] = []
    answered = trio.Event()

    async def serve(sock: socket.socket) -> None:
        served.append(sock.getsockname()[1])
        if len(served) == 1:
            sock.close()
            raise RuntimeError("the server broke")
        listener = trio.socket.from_stdlib_socket(sock)
        with listener:
            conn, _ = await listener.accept()
            with conn:
                await conn.send(b"hello")
            answered.set()
            await trio.sleep_forever()

    supervisor = Supervisor(first_pause=0.01)
    async with trio.open_nursery() as nursery:
        supervisor.start(nursery, "report receiver", mount._serving("for the test", first, serve))
        with trio.fail_after(5):
            while len(served) < 2:
                await trio.sleep(0.01)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            async with client:
                assert await client.receive_some(5) == b"hello"
            await answered.wait()
        nursery.cancel_scope.cancel()
    assert served == [port, port]
    assert supervisor.health["report receiver"].failures == 1
