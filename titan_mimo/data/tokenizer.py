"""A Hugging Face `tokenizers` tokenizer from a local tokenizer.json, with the special tokens the
data path needs (image placeholder, pad, optional bos/eos) resolved to ids and checked against
the model config once, before any process-group work. Without an image encoder
(`placeholder_id = None`) the image token is optional: text records need none."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer


class TextTokenizer:
    def __init__(self, path: str, *, image_token: str, pad_token: str, bos_token: str, eos_token: str,
                 placeholder_id: int | None, pad_id: int, vocab_size: int, placeholder_field: str) -> None:
        if not Path(path).is_file():
            raise ValueError(f"data.tokenizer = {path!r}: no such file (a Hugging Face tokenizer.json)")
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 (tokenizers raises a bare Exception on bad files)
            raise ValueError(f"data.tokenizer = {path!r}: cannot load: {e}") from None
        self.path = path

        def token_id(field: str, token: str, required: bool = True) -> int | None:
            if not token:
                return None
            tid = self.tok.token_to_id(token)
            if tid is None and required:
                raise ValueError(f"data.{field} = {token!r} is not a token of {path}; add it as a "
                                 "special token when training the tokenizer, or set the field to "
                                 "one it has")
            return tid

        self.image_token = image_token
        self.image_id = token_id("image_token", image_token, required=placeholder_id is not None)
        self.pad_id = token_id("pad_token", pad_token)
        self.bos_id = token_id("bos_token", bos_token)
        self.eos_id = token_id("eos_token", eos_token)
        if placeholder_id is not None and self.image_id != placeholder_id:
            raise ValueError(f"{placeholder_field} = {placeholder_id} but {path} maps data.image_token "
                             f"{image_token!r} to {self.image_id}; set {placeholder_field} = {self.image_id}")
        if self.pad_id != pad_id:
            raise ValueError(f"data.pad_id = {pad_id} but {path} maps data.pad_token {pad_token!r} to "
                             f"{self.pad_id}; set data.pad_id = {self.pad_id}")
        n = self.tok.get_vocab_size(with_added_tokens=True)
        if n > vocab_size:
            raise ValueError(f"{path} has {n} tokens but the language model's vocab_size is {vocab_size}; "
                             "use a smaller tokenizer or a language model flavor with a larger vocabulary")
        self.reserved = {self.image_id, self.pad_id} - {None}
        """Ids plain text must not contain (they would read as an image or as padding)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text, no special tokens added (bos/eos are placed by the caller)."""
        return self.tok.encode(text, add_special_tokens=False).ids

    def __getstate__(self) -> dict:
        # A Tokenizer pickles, but through its JSON; reloading from the file is as cheap.
        return {**self.__dict__, "tok": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.tok = Tokenizer.from_file(self.path)
