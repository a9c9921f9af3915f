"""Supernet with random partial-channel sampling (paper Sec. 3.2): the sequential supernet with one change in the mixed op."""
import torch

import model_search_softmax_sigmoid as sequential


class MixedOp(sequential.MixedOp):
    def mix_channels(self, x):
        """As the sequential op, but each edge's channels are first put in a random order (a fresh permutation per
        edge and call, shared by the batch), so the next edge processes a random subset of channels."""
        permutation = self.permutations(x.shape[1:-2], x.device)
        x = x.gather(-3, permutation[..., None, None].expand_as(x))
        return super().mix_channels(x)

    @staticmethod
    def permutations(shape, device):
        """Uniformly random permutations of the last axis of `shape`, all drawn with one kernel (float64 keys, so
        ties are practically impossible)."""
        return torch.rand(shape, dtype=torch.float64, device=device).argsort(dim=-1)


class Network(sequential.Network):
    mixed_op = MixedOp
