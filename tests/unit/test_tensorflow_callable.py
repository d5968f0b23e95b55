"""The TensorFlow backend's session call: the C++ callable (``Session::RunCallable``) and the public
``make_callable`` path it falls back to give TensorFlow's own ``Session.run`` results, with ops on the
calling thread (one inter-op thread) or on the session's pool."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")

from tritium.backends.tensorflow import TensorFlowModel  # noqa: E402  after the importorskip


class _PublicOnly:
    """A session without the callable API (as a TensorFlow that dropped it would be)."""

    def __init__(self, session: Any) -> None:
        self.make_callable = session.make_callable


@pytest.mark.parametrize("inter", [0, 1])
@pytest.mark.parametrize("public", [False, True])
def test_callable_gives_session_run_results(inter: int, public: bool) -> None:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        ids = tf.compat.v1.placeholder(tf.int64, [None, 2], name="ids")
        outputs = [tf.nn.softmax(x * 2.0), tf.strings.upper(words), ids + 1]
    session = tf.compat.v1.Session(graph=graph)
    model = TensorFlowModel.__new__(TensorFlowModel)  # only what _callable reads
    model.tf, model.inter = tf, inter
    call = model._callable(_PublicOnly(session) if public else session, [x, words, ids], outputs)
    feeds = [np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::-1],  # not contiguous
             np.array([b"abc", b"\xc3\xa9t\xc3\xa9"], dtype=object), np.array([[1, 2], [3, 4]], np.int64)]
    got = call(*feeds)
    expected = session.run(outputs, dict(zip([x, words, ids], feeds, strict=True)))
    assert len(got) == 3
    np.testing.assert_array_equal(got[0], expected[0])
    assert list(got[1]) == list(expected[1]) == [b"ABC", b"\xc3\xa9T\xc3\xa9"]
    np.testing.assert_array_equal(got[2], expected[2])
    if not public:  # (Session.run converts a feed to the placeholder's type; the callable refuses it)
        with pytest.raises(tf.errors.InvalidArgumentError, match="double"):
            call(feeds[0].astype(np.float64), feeds[1], feeds[2])
    session.close()
