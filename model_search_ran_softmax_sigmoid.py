"""Supernet with random partial-channel sampling (paper Sec. 3.2): the sequential supernet with one change in the mixed op."""
import torch

import model_search_softmax_sigmoid as sequential
from model_search_softmax_sigmoid import channel_shuffle


class MixedOp(sequential.MixedOp):
    def join(self, processed, bypassed):
        """As the sequential op, but the channels are randomly permuted first (one permutation per call,
        shared by the batch), so the next edge processes a random subset of channels."""
        x = torch.cat([processed, bypassed], dim=1)
        x = x[:, torch.randperm(x.shape[1], device=x.device)]
        return channel_shuffle(x, self.k)


class Network(sequential.Network):
    mixed_op = MixedOp
