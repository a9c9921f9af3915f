"""Architecture step of the bilevel search: first-order, or DARTS' second-order unrolled step (paper Sec. 3.3)."""
import torch
import torch.nn.functional as F
from torch.func import functional_call

from utils import unwrap

# Finite-difference step of the Hessian-vector product, as in DARTS: r = 0.01 / ||grad||.
HESSIAN_EPSILON = 0.01


class Architect:
    def __init__(self, model, momentum, weight_decay, arch_learning_rate, arch_weight_decay, grad_sync=None):
        """`grad_sync(tensors)` averages gradients across processes in distributed search (None: one process)."""
        self.model = model
        self.network_momentum = momentum
        self.network_weight_decay = weight_decay
        self.grad_sync = grad_sync
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=arch_learning_rate,
                                          betas=(0.5, 0.999), weight_decay=arch_weight_decay)

    def step(self, input_train, target_train, input_valid, target_valid, eta, network_optimizer, unrolled):
        """One Adam step on the architecture parameters; returns the (detached) validation loss."""
        arch_params = self.model.arch_parameters()
        self.optimizer.zero_grad(set_to_none=True)
        if unrolled:
            loss, grads = self.unrolled_gradients(input_train, target_train, input_valid, target_valid,
                                                  eta, network_optimizer)
            for p, g in zip(arch_params, grads):
                p.grad = g
        else:
            loss = F.cross_entropy(self.model(input_valid), target_valid)
            # Only the architecture gradients are needed: the weight gradients are not computed at all.
            loss.backward(inputs=arch_params)
        if self.grad_sync is not None:
            self.grad_sync([p.grad for p in arch_params])
        self.optimizer.step()
        return loss.detach()

    def unrolled_gradients(self, input_train, target_train, input_valid, target_valid, eta, network_optimizer):
        """d/dalpha L_val(w', alpha) with w' = w - eta * (momentum * buf + dL_train/dw + wd * w) (DARTS eq. 7),
        the second-order term by a finite-difference Hessian-vector product (DARTS eq. 8)."""
        model = unwrap(self.model)  # functional_call needs the plain module's parameter names
        arch_params = model.arch_parameters()
        names, weights = zip(*[(n, p) for n, p in model.named_parameters() if n not in model._arch_names])

        # Virtual SGD step of the weights, the same update the weight optimizer would make.
        train_loss = F.cross_entropy(self.model(input_train), target_train)
        weight_grads = torch.autograd.grad(train_loss, weights, materialize_grads=True)
        with torch.no_grad():
            unrolled = []
            for w, g in zip(weights, weight_grads):
                buf = network_optimizer.state.get(w, {}).get('momentum_buffer')
                moment = buf * self.network_momentum if buf is not None else 0.
                unrolled.append(w - eta * (moment + g + self.network_weight_decay * w))

        # Validation loss at the virtual weights: gradient for alpha (direct) and for w' (to be propagated).
        virtual = [w.requires_grad_() for w in unrolled]
        params = dict(zip(names, virtual))
        valid_loss = F.cross_entropy(functional_call(model, params, (input_valid,), strict=False), target_valid)
        grads = torch.autograd.grad(valid_loss, list(arch_params) + virtual, materialize_grads=True)
        arch_grads, vector = grads[:len(arch_params)], grads[len(arch_params):]

        implicit = self.hessian_vector_product(names, weights, vector, input_train, target_train)
        return valid_loss, [g - eta * h for g, h in zip(arch_grads, implicit)]

    def hessian_vector_product(self, names, weights, vector, input_train, target_train):
        """(d2 L_train / dalpha dw) . vector, by central differences along `vector`."""
        r = HESSIAN_EPSILON / torch.sqrt(sum((v * v).sum() for v in vector))
        model = unwrap(self.model)
        arch_params = model.arch_parameters()
        grads = []
        for sign in (1., -1.):
            with torch.no_grad():
                params = {n: w + sign * r * v for n, w, v in zip(names, weights, vector)}
            loss = F.cross_entropy(functional_call(model, params, (input_train,), strict=False), target_train)
            grads.append(torch.autograd.grad(loss, arch_params, materialize_grads=True))
        return [(gp - gn) / (2 * r) for gp, gn in zip(*grads)]
