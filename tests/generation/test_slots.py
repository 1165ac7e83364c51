"""The slot API of a continuous batch: decoder calls on named cache rows at per-row depths
(ModuleDecoder and the native C++ decoder), and SlotCache on top of them. Each slot's logits
must be those of its sequence decoded alone."""

import pytest
import torch

import llm
from llm.generation.slots import SlotCache
from llm.native import extension
from llm.ops import BackendUnavailableError

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = llm.GPTConfig(vocab_size=50257, n_positions=48, n_embd=64, n_layer=2, n_head=4)


def _native_ok() -> bool:
    try:
        extension()
        return True
    except BackendUnavailableError:
        return False


BACKENDS = ["torch", pytest.param("native", marks=pytest.mark.skipif(not _native_ok(), reason="llm._C not built"))]


@pytest.fixture(scope="module", params=BACKENDS)
def model(request):
    torch.manual_seed(0)
    return llm.GPT(CONFIG, backend=request.param).eval()


def _alone(model, seq: list[int]) -> torch.Tensor:
    """Logits [len(seq), V] after each token of `seq`, decoding it alone one token at a time
    after a one-token prefill (the reference for every slot)."""
    dec = model.make_decoder(1, CONFIG.n_positions)
    out = []
    for t, tok in enumerate(seq):
        ids = torch.tensor([[tok]])
        pos = torch.tensor([t])
        call = dec.prefill if t == 0 else dec.decode_one_token
        out.append(call(ids, pos, pos[None])[0])
    return torch.stack(out)


@torch.inference_mode()
def test_slots_at_different_depths_equal_each_sequence_alone(model):
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 50257, (n,), generator=g).tolist() for n in (11, 5, 17)]
    cache = SlotCache(model, 4)
    got = {i: {} for i in range(3)}  # sequence -> {token index: logits}
    # sequence 0 into slot 0 in two chunks; sequence 1 later, in one; 2 after a step
    (s0,), start = cache.acquire(seqs[0])
    assert (s0, start) == (0, 0)
    cache.prefill([s0], seqs[0][:4])
    got[0][7] = cache.prefill([s0], seqs[0][4:8])[0]
    (s1,), _ = cache.acquire(seqs[1])
    got[1][4] = cache.prefill([s1], seqs[1])[0]
    got[0][8] = cache.decode([s0], [seqs[0][8]])[0]
    (s2,), _ = cache.acquire(seqs[2])
    got[2][12] = cache.prefill([s2], seqs[2][:13])[0]
    # steps over the running slots, named in any order, each at its own depth
    for k in range(2):
        logits = cache.decode([s2, s0], [seqs[2][13 + k], seqs[0][9 + k]])
        got[2][13 + k], got[0][9 + k] = logits[0], logits[1]
    got[2][15] = cache.decode([s2], [seqs[2][15]])[0]
    assert cache.held[s0] == seqs[0][:11] and cache.held[s2] == seqs[2][:16]
    for i, seq in enumerate(seqs):
        want = _alone(model, seq)
        for t, logits in got[i].items():
            # native: each token's sums in the same order however it is batched (bitwise); torch:
            # BLAS may round a 4-token chunk differently from 4 single tokens
            torch.testing.assert_close(logits, want[t], rtol=0, atol=0 if model.backend == "native" else 1e-5,
                                       msg=f"sequence {i}, token {t}")


@torch.inference_mode()
def test_prefix_reuse_and_release(model):
    cache = SlotCache(model, 3)
    prompt = list(range(100, 120))
    (s,), start = cache.acquire(prompt)
    first = cache.prefill([s], prompt)
    cache.release(s)
    # the same prompt: everything but the last token is reused, and the logits are the same
    (s_again,), start = cache.acquire(prompt)
    assert (s_again, start) == (s, 19)
    again = cache.prefill([s_again], prompt[start:])
    torch.testing.assert_close(again, first, rtol=0, atol=0 if model.backend == "native" else 1e-5)
    # a prompt that shares 12 tokens with a free slot goes to it
    cache.release(s_again)
    other = prompt[:12] + [7, 8, 9]
    (s3,), start = cache.acquire(other)
    assert (s3, start) == (s, 12) and cache.held[s] == prompt[:12]
    cache.release(s3)
    # two choices take two slots; the second holds nothing, so both start at 0
    slots, start = cache.acquire(other, n=2)
    assert slots[0] == s and start == 0
    with pytest.raises(ValueError, match="2 slots wanted, 1 free"):
        cache.acquire(other, n=2)
    with pytest.raises(ValueError, match="exceeds the slot length 48"):
        cache.acquire(list(range(49)))
    with pytest.raises(ValueError, match="n_slots must be an integer >= 1"):
        SlotCache(model, 0)


@torch.inference_mode()
def test_triton_backend_steps_rows_at_their_own_depths():
    """The Triton kernels take one query slot for all rows; per-row slots go to the reference
    (on CPU through Triton's interpreter, so only a few calls)."""
    torch.manual_seed(0)
    ref = llm.GPT(CONFIG, backend="torch").eval()
    tri = llm.GPT(CONFIG, backend="torch").eval()
    tri.load_state_dict(ref.state_dict())
    tri.set_backend("triton")
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    cache = SlotCache(tri, 2)
    for slot, seq in enumerate(seqs):
        assert cache.acquire(seq[:-1])[0] == [slot]
        cache.prefill([slot], seq[:-1])
    got = cache.decode([1, 0], [seqs[1][-1], seqs[0][-1]])  # named out of order, at depths 2 and 5
    for logits, seq in zip(got, seqs[::-1]):
        torch.testing.assert_close(logits, _alone(ref, seq)[-1], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not _native_ok(), reason="llm._C not built")
@torch.inference_mode()
def test_native_decoder_rejects_bad_rows():
    torch.manual_seed(0)
    model = llm.GPT(CONFIG, backend="native").eval()
    dec = model.make_decoder(3, 8)
    ids, pos = torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 1, dtype=torch.long)
    with pytest.raises(RuntimeError, match="rows names cache row 1 twice"):
        dec.decode_one_token(ids, pos, pos, None, rows=torch.tensor([1, 1]))
    with pytest.raises(RuntimeError, match=r"rows\[1\] = 3 is outside the cache rows \[0, 3\)"):
        dec.decode_one_token(ids, pos, pos, None, rows=torch.tensor([0, 3]))
    with pytest.raises(RuntimeError, match=r"tokens must be int64 \[1, T >= 1\]"):
        dec.decode_one_token(ids, pos, pos, None, rows=torch.tensor([2]))
    with pytest.raises(RuntimeError, match=r"input_pos must be int64 \[1\] or \[2, 1\]"):
        dec.decode_one_token(ids, torch.zeros(3, 1, dtype=torch.long), pos, None, rows=torch.tensor([0, 2]))
    with pytest.raises(RuntimeError, match=r"input_pos\[1\] = 8 is outside the cache"):
        dec.decode_one_token(ids, torch.tensor([[0], [8]]), pos, None, rows=torch.tensor([0, 2]))
    assert dec.decode_one_token(ids, pos, pos, None, rows=torch.tensor([2, 0])).shape == (2, 50257)
