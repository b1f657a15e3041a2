import pytest

from streamd.kafka.framing import FrameDecoder, FrameTooLarge


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def test_frames_split_across_reads_are_reassembled() -> None:
    dec = FrameDecoder(1024)
    data = frame(b"hello") + frame(b"") + frame(b"world!")
    out = []
    for i in range(len(data)):
        out += dec.feed(data[i : i + 1])
    assert out == [b"hello", b"", b"world!"]
    assert dec.buffered == 0


def test_many_frames_in_one_read() -> None:
    dec = FrameDecoder(1024)
    assert dec.feed(frame(b"a") + frame(b"bb") + frame(b"ccc")[:3]) == [b"a", b"bb"]
    assert dec.feed(frame(b"ccc")[3:]) == [b"ccc"]


@pytest.mark.parametrize("size", [-1, -(2**31), 1025])
def test_invalid_sizes_raise_before_buffering_the_body(size: int) -> None:
    dec = FrameDecoder(1024)
    with pytest.raises(FrameTooLarge):
        dec.feed(size.to_bytes(4, "big", signed=True) + b"x" * 10)


def test_limit_is_inclusive() -> None:
    dec = FrameDecoder(4)
    assert dec.feed(frame(b"abcd")) == [b"abcd"]
