"""titan_mimo/data/mock.py: a language model alone (no encoder) gets text-only samples whatever
`text_only_fraction` says."""

from titan_mimo.data.mock import MockImageCaption


def test_without_encoders_every_sample_is_text():
    ds = MockImageCaption(seed=0, seq_len=32, vocab_size=256, pad_id=0, encoders=[], image_sizes=[[8, 8]],
                          num_values=16, text_only_fraction=0.0)
    for i in range(8):
        s = ds.sample(i)
        assert s.tokens.shape == (32,) and (s.tokens != 0).sum() > 0
        assert (s.labels != -100).sum() > 0
