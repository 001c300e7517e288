"""The readers-writer lock: writers alone, readers together, waiting writers before new
readers, and the readers waiting on a writer before the next writer, so a write applied
in slices lets searches through between them."""

from __future__ import annotations

import threading
import time

from contentembed.services.common.rwlock import ReadWriteLock


def test_readers_waiting_on_a_writer_go_before_it_writes_again() -> None:
    lock = ReadWriteLock()
    order: list[str] = []
    first_slice = threading.Event()

    def writer() -> None:
        for n in range(3):  # three slices, asked for back to back
            with lock.write():
                order.append(f"write {n}")
                if n == 0:
                    first_slice.set()
                    time.sleep(0.2)  # the reader arrives meanwhile

    def reader() -> None:
        first_slice.wait()
        with lock.read():
            order.append("read")

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert order == ["write 0", "read", "write 1", "write 2"]


def test_a_waiting_writer_goes_before_new_readers() -> None:
    lock = ReadWriteLock()
    order: list[str] = []
    reading = threading.Event()

    def first_reader() -> None:
        with lock.read():
            reading.set()
            time.sleep(0.2)
            order.append("read 1")

    def writer() -> None:
        reading.wait()
        with lock.write():
            order.append("write")

    def late_reader() -> None:
        reading.wait()
        time.sleep(0.05)  # after the writer started waiting
        with lock.read():
            order.append("read 2")

    threads = [threading.Thread(target=t) for t in (first_reader, writer, late_reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert order == ["read 1", "write", "read 2"]
