"""graphssl/ops/buffers.py: a pooled buffer is handed out again only once nothing holds it."""
import torch

from graphssl.ops.buffers import BufferPool

SHAPE = (4, 3, 8, 8)


def test_a_released_buffer_is_reused_and_a_held_one_is_not():
    pool = BufferPool(keep=2)
    a = pool.empty(SHAPE)
    first = a.data_ptr()
    b = pool.empty(SHAPE)  # a is still held
    assert b.data_ptr() != first and a.shape == SHAPE and a.dtype == torch.float32
    del a
    assert pool.empty(SHAPE).data_ptr() == first
    assert pool.empty(SHAPE, torch.float64).data_ptr() not in (first, b.data_ptr())  # keyed by dtype too


def test_views_and_tensors_autograd_saved_keep_a_buffer_taken():
    pool = BufferPool(keep=1)
    a = pool.empty(SHAPE).fill_(1.0)
    first = a.data_ptr()
    row = a[0]  # a view made from the handed-out tensor
    del a
    assert pool.empty(SHAPE).data_ptr() != first
    del row
    x = pool.empty(SHAPE).fill_(1.0)
    assert x.data_ptr() == first
    conv = torch.nn.Conv2d(3, 2, 3)
    y = conv(x).sum()  # autograd saves x for the weight's gradient
    del x
    assert pool.empty(SHAPE).data_ptr() != first
    y.backward()  # frees the graph and with it the saved x
    del y
    assert pool.empty(SHAPE).data_ptr() == first


def test_beyond_keep_buffers_are_plain_tensors():
    pool = BufferPool(keep=1)
    held = [pool.empty(SHAPE) for _ in range(3)]
    assert len({t.data_ptr() for t in held}) == 3


def test_shared_buffers_and_shapes_long_unused_are_let_go():
    pool = BufferPool(keep=1, shapes=2)
    a = pool.empty(SHAPE)
    a.share_memory_()  # another process may read it: never hand it out again
    del a
    assert not pool.empty(SHAPE).is_shared()
    pool = BufferPool(keep=1, shapes=2)
    x = pool.empty((2, 2))
    kept = x.data_ptr()
    del x
    pool.empty((3, 3))
    pool.empty((4, 4))  # a third shape: (2, 2), the least recently used, is dropped
    assert pool.empty((2, 2)).data_ptr() != kept and len(pool._held) == 2
