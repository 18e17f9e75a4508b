"""A ROUTER that answers every request with a reply of a fixed size, as the robot server's loop does
(poll, then drain without blocking): the bare ZeroMQ round trip `robot-env bench` compares against.
Exits when stdin closes (the parent is done or gone). Usage: echo_router.py ENDPOINT REPLY_BYTES"""
import os
import sys

import zmq


def main(endpoint: str, reply_size: int) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(endpoint)
    reply = b"r" * reply_size
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(0, zmq.POLLIN)
    print("READY", flush=True)
    running = True
    while running:
        events = dict(poller.poll(1000))
        if router in events:
            for _ in range(64):
                try:
                    frames = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                router.send_multipart(frames[:-1] + [reply])
        if 0 in events and not os.read(0, 4096):
            running = False
        if os.getppid() == 1:
            running = False
    router.close(0)
    ctx.term()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
