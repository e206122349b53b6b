"""The bridge: moves projected encoder embeddings from an encoder module's ranks to the
language model's first pipeline stage, and their gradients back, over the world group.

Routing is by sample slot: inside a micro-batch, each side's dp ranks own equal contiguous
slot ranges (`titan_mimo.data.plan`), and every overlap of an encoder range with a language
range is one message. Fan-in, fan-out and 1:1 are the same rule, and uneven image-token
counts per sample work because message sizes come from the samples, not from equal division.

Each message is a 1-element int64 header (the row count) followed, when non-zero, by the rows.
The receiver checks the header against the count it expects from its own data, so a data or
model mismatch fails loudly instead of hanging or mis-assigning rows; a micro-batch without
images still exchanges its (zero) header, so both sides stay in lockstep.

With TP, one rank per replica (tp coordinate 0) sends and every TP rank of the receiving
replica receives: no broadcast inside the receiving TP group is needed, at the price of tp
copies on the wire (measure before changing).

Legend: N = embedding rows (image tokens) of the owned samples, D = language hidden size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from titan_mimo.data.plan import overlaps, owned_slots
from titan_mimo.topology import Placement

_FWD_TAG, _BWD_TAG = 1, 2


def _dp_coords(p: Placement, dp_rank: int) -> dict[str, int]:
    return {"dp_replicate": dp_rank // p.dp_shard, "dp_shard": dp_rank % p.dp_shard}


@dataclass(kw_only=True)
class Route:
    """One overlap of an encoder dp rank's slots with a language dp rank's slots."""

    send_to: list[int]
    """Global ranks this rank sends these slots to (empty unless this rank is tp 0)."""
    recv_from: int
    """The one global rank this rank receives these slots from."""
    lo: int
    hi: int


@dataclass(kw_only=True)
class BridgeStats:
    wait_s: float = 0.0
    """Seconds this rank spent blocked on bridge receives."""
    bytes_sent: int = 0


@dataclass(kw_only=True)
class Bridge:
    """One graph edge (encoder -> language) as seen from this rank."""

    encoder: Placement
    language: Placement
    rank: int
    slots_per_microbatch: int
    hidden: int
    dtype: torch.dtype
    device: torch.device
    stats: BridgeStats = field(default_factory=BridgeStats)
    _pending: list = field(default_factory=list)
    _routes_by_side: dict = field(default_factory=dict)

    # ---- routing ---------------------------------------------------------------------------

    def routes(self, side: str) -> list[Route]:
        """This rank's routes as a `side` ("encoder" or "language") endpoint; fixed by the
        placements, so computed once."""
        if side not in self._routes_by_side:
            self._routes_by_side[side] = self._compute_routes(side)
        return self._routes_by_side[side]

    def _compute_routes(self, side: str) -> list[Route]:
        """Routes of this rank as a `side` ("encoder" or "language") endpoint."""
        enc, lm, n = self.encoder, self.language, self.slots_per_microbatch
        mine = self.encoder if side == "encoder" else self.language
        c = mine.coords_of(self.rank)
        my_dp = c["dp_replicate"] * mine.dp_shard + c["dp_shard"]
        routes = []
        for e_dp, l_dp, lo, hi in overlaps(n, enc.dp, lm.dp):
            if side == "encoder" and e_dp == my_dp:
                peer, peer_dp = lm, l_dp
            elif side == "language" and l_dp == my_dp:
                peer, peer_dp = enc, e_dp
            else:
                continue
            peer_ranks = [peer.rank_at(pp=0, tp=t, **_dp_coords(peer, peer_dp)) for t in range(peer.tp)]
            routes.append(Route(send_to=peer_ranks if c["tp"] == 0 else [], recv_from=peer_ranks[0],
                                lo=lo, hi=hi))
        return routes

    def my_slots(self, side: str) -> tuple[int, int]:
        p = self.encoder if side == "encoder" else self.language
        c = p.coords_of(self.rank)
        return owned_slots(self.slots_per_microbatch, p.dp, c["dp_replicate"] * p.dp_shard + c["dp_shard"])

    # ---- point-to-point with a row-count header ----------------------------------------------

    def _send_rows(self, rows_ND: Tensor, dst: int, tag: int) -> None:
        header = torch.tensor([rows_ND.shape[0]], dtype=torch.int64, device=self.device)
        self._pending.append((dist.isend(header, dst, tag=tag), header))
        if rows_ND.shape[0]:
            payload = rows_ND.detach().to(self.dtype).contiguous()
            self._pending.append((dist.isend(payload, dst, tag=tag), payload))
            self.stats.bytes_sent += payload.numel() * payload.element_size()

    def _recv_rows(self, src: int, expected: int, tag: int, what: str) -> Tensor:
        t0 = time.perf_counter()
        header = torch.empty(1, dtype=torch.int64, device=self.device)
        dist.recv(header, src, tag=tag)
        got = int(header.item())
        if got != expected:
            raise RuntimeError(
                f"bridge {self.encoder.name}->{self.language.name}: rank {src} sent {got} {what} "
                f"rows but rank {self.rank} expected {expected} from its own samples; the "
                "encoder's tokens-per-image and the text's placeholder counts disagree"
            )
        out = torch.empty(got, self.hidden, dtype=self.dtype, device=self.device)
        if got:
            dist.recv(out, src, tag=tag)
        self.stats.wait_s += time.perf_counter() - t0
        return out

    def wait_sends(self) -> None:
        """Complete outstanding sends (call once per step, after the schedule)."""
        for work, _buf in self._pending:
            work.wait()
        self._pending.clear()

    def _send_slots(self, side: str, rows_ND: Tensor, rows_per_slot: list[int], tag: int) -> None:
        """Send the rows of each route's slot range (rows in slot order, `rows_per_slot` each)."""
        my_lo, _ = self.my_slots(side)
        offsets = [0]
        for r in rows_per_slot:
            offsets.append(offsets[-1] + r)
        for route in self.routes(side):
            rows = rows_ND[offsets[route.lo - my_lo]: offsets[route.hi - my_lo]]
            for dst in route.send_to:
                self._send_rows(rows, dst, tag)

    def _recv_slots(self, side: str, rows_per_slot: list[int], tag: int, what: str) -> Tensor:
        """Receive every route's rows and concatenate them in slot order."""
        my_lo, _ = self.my_slots(side)
        parts = [self._recv_rows(route.recv_from, sum(rows_per_slot[route.lo - my_lo: route.hi - my_lo]),
                                 tag, what)
                 for route in self.routes(side)]
        return torch.cat(parts) if parts else torch.empty(0, self.hidden, dtype=self.dtype, device=self.device)

    # ---- encoder side ------------------------------------------------------------------------

    def send_embeddings(self, emb_ND: Tensor, rows_per_slot: list[int]) -> None:
        """Encoder: send this rank's projected embeddings of one micro-batch (slot order)."""
        self._send_slots("encoder", emb_ND, rows_per_slot, _FWD_TAG)

    def recv_gradient(self, rows_per_slot: list[int]) -> Tensor:
        """Encoder: receive d(loss)/d(embeddings) of one micro-batch, in slot order."""
        return self._recv_slots("encoder", rows_per_slot, _BWD_TAG, "gradient")

    # ---- language side -----------------------------------------------------------------------

    def recv_embeddings(self, rows_per_slot: list[int], requires_grad: bool) -> Tensor:
        """Language first stage: receive one micro-batch's embeddings; its backward sends the
        gradient back to the encoder ranks, as soon as autograd reaches it."""
        # A leaf that requires grad makes autograd call _BridgeRecv.backward for this micro-batch.
        anchor = torch.empty(0, device=self.device, requires_grad=True) if requires_grad else None
        return _BridgeRecv.apply(self, rows_per_slot, anchor)


class _BridgeRecv(torch.autograd.Function):
    """Forward: receive embeddings. Backward: send their gradient to the encoder ranks.

    A Function (not a hook on a leaf) so the gradient leaves the moment the language stage's
    backward produces it, letting the encoder's backward of this micro-batch start while the
    language model works on the next one.
    """

    @staticmethod
    def forward(ctx, bridge: Bridge, rows_per_slot: list[int], _anchor: Tensor | None) -> Tensor:
        ctx.bridge, ctx.rows_per_slot = bridge, rows_per_slot
        return bridge._recv_slots("language", rows_per_slot, _FWD_TAG, "embedding")

    @staticmethod
    def backward(ctx, grad_ND: Tensor):
        ctx.bridge._send_slots("language", grad_ND, ctx.rows_per_slot, _BWD_TAG)
        return None, None, None
