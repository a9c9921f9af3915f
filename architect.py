"""Architecture step of the bilevel search: first-order, or DARTS' second-order unrolled step (paper Sec. 3.3)."""
import torch
import torch.nn.functional as F
from torch.func import functional_call

import training_step
import utils

# Finite-difference step of the Hessian-vector product, as in DARTS: r = 0.01 / ||grad||.
HESSIAN_EPSILON = 0.01
ARCH_BETAS = (0.5, 0.999)  # Adam betas of the architecture optimizer (DARTS, PC-DARTS, released code)


class Architect:
    """Adam on the supernet's architecture parameters, against the weight optimizer's SGD.

    model: the supernet as the search runs it (possibly compiled); weight_optimizer: the SGD optimizer of the
    weights, whose learning rate, momentum and weight decay the unrolled step imitates; grad_sync(tensors): averages
    gradients across processes in a distributed search (None in one process); penalty(network): a term of the
    architecture loss that depends on the architecture parameters alone (budget.BudgetPenalty), or None."""

    def __init__(self, model, weight_optimizer, arch_learning_rate, arch_weight_decay, grad_sync=None, penalty=None):
        self.model = model
        self.network = utils.unwrap(model)  # the plain module: parameter names for functional_call
        self.weight_optimizer = weight_optimizer
        self.grad_sync = grad_sync
        self.penalty = penalty
        self.optimizer = torch.optim.Adam(self.network.arch_parameters(), lr=arch_learning_rate, betas=ARCH_BETAS,
                                          weight_decay=arch_weight_decay)

    def step(self, train_batch, valid_batch, unrolled):
        """One Adam step on the architecture parameters from the validation batch; returns the (detached)
        validation loss. The unrolled step also needs the training batch of the weight step that follows.

        The gradients come from torch.autograd.grad and Adam updates through training_step.optimizer_update: nothing is
        written to .grad and nothing read back to the host, so the step can be compiled (training_step.CompiledStep)."""
        arch_params = self.network.arch_parameters()
        if unrolled:
            loss, grads = self.unrolled_gradients(train_batch, valid_batch)
        else:
            x, y = valid_batch
            loss = F.cross_entropy(self.model(x), y)
            # Only the architecture gradients are computed, not the weights'. An architecture parameter that no
            # cell uses (alphas_normal of a supernet of reduction cells only) gets none, and Adam leaves it alone.
            grads = torch.autograd.grad(loss, arch_params, allow_unused=True)
        if self.grad_sync is not None:
            self.grad_sync(grads)
        if self.penalty is not None:  # after the sync: every process computes the same penalty
            penalty = torch.autograd.grad(self.penalty(self.network), arch_params, allow_unused=True)
            grads = [g if p is None else p if g is None else g + p for g, p in zip(grads, penalty)]
        training_step.optimizer_update(self.optimizer, arch_params, grads)
        return loss.detach()

    def unrolled_gradients(self, train_batch, valid_batch):
        """d/dalpha L_val(w', alpha) with w' = w - eta * (momentum * buf + dL_train/dw + wd * w) (DARTS eq. 7),
        the second-order term by a finite-difference Hessian-vector product (DARTS eq. 8)."""
        (x_train, y_train), (x_valid, y_valid) = train_batch, valid_batch
        group = self.weight_optimizer.param_groups[0]
        eta, momentum, weight_decay = group['lr'], group['momentum'], group['weight_decay']
        arch_params = self.network.arch_parameters()
        names, weights = zip(*self.network.named_weight_parameters())

        # Virtual SGD step of the weights, the same update the weight optimizer would make.
        train_loss = F.cross_entropy(self.model(x_train), y_train)
        weight_grads = torch.autograd.grad(train_loss, weights, materialize_grads=True)
        with torch.no_grad():
            unrolled = []
            for w, g in zip(weights, weight_grads):
                # (a compiled step creates the buffers as zeros before its first step: the same update)
                buf = self.weight_optimizer.state.get(w, {}).get('momentum_buffer')
                moment = buf * momentum if buf is not None else 0.
                unrolled.append(w - eta * (moment + g + weight_decay * w))

        # Validation loss at the virtual weights: gradient for alpha (direct) and for w' (to be propagated).
        virtual = [w.requires_grad_() for w in unrolled]
        params = dict(zip(names, virtual))
        valid_loss = F.cross_entropy(functional_call(self.network, params, (x_valid,), strict=False), y_valid)
        grads = torch.autograd.grad(valid_loss, list(arch_params) + virtual, materialize_grads=True)
        arch_grads, vector = grads[:len(arch_params)], grads[len(arch_params):]

        implicit = self.hessian_vector_product(names, weights, vector, train_batch)
        return valid_loss, [g - eta * h for g, h in zip(arch_grads, implicit)]

    def hessian_vector_product(self, names, weights, vector, train_batch):
        """(d2 L_train / dalpha dw) . vector, by central differences along `vector`."""
        x, y = train_batch
        r = HESSIAN_EPSILON / torch.sqrt(sum((v * v).sum() for v in vector))
        arch_params = self.network.arch_parameters()
        grads = []
        for sign in (1., -1.):
            with torch.no_grad():
                params = {n: w + sign * r * v for n, w, v in zip(names, weights, vector)}
            loss = F.cross_entropy(functional_call(self.network, params, (x,), strict=False), y)
            grads.append(torch.autograd.grad(loss, arch_params, materialize_grads=True))
        return [(gp - gn) / (2 * r) for gp, gn in zip(*grads)]
