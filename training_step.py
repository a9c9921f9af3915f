"""One training step of either script (train.py, train_search.py): zero the gradients, the forward under autocast, the
loss, the update (WeightUpdate: backward, loss scaling, gradient sync, clipping, optimizer step); and --compile's
compilation of a whole step into one graph (CompiledStep), with the functional optimizer update that makes it
capturable."""
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
# torch.optim's functional updates, imported by name: Dynamo does not resolve torch.optim.adam.adam.
from torch.optim.adam import adam as functional_adam
from torch.optim.sgd import sgd as functional_sgd

import utils
from errors import UserError


def weight_step(model, update, inputs, targets, loss):
    """One weight step: model(*inputs) under autocast, loss(outputs, *targets) -> (loss, logits, per-sample score or
    None), the update of `update`'s parameters. What differs between the scripts and the --noise_method's is only the
    forward's inputs and the loss. Returns the detached logits, loss and score."""
    update.zero_grad()
    with utils.autocast(inputs[0].device, update.amp_dtype):
        outputs = model(*inputs)
        value, logits, score = loss(outputs, *targets)
    update.apply(value)
    return logits.detach(), value.detach(), None if score is None else score.detach()


# The backend of torch.compile. Tests take 'aot_eager': the same capture (Dynamo, AOT autograd's joint graph), but
# without inductor's code generation, which takes about ten minutes for a 2-cell supernet's step on a 2-core CPU.
COMPILE_BACKEND = 'inductor'


def configure_compiler():
    """The compiler's settings for this project, set before anything is compiled (a change of them afterwards
    would recompile every graph). Returns whether this torch can compile a whole training step."""
    import torch._dynamo
    import torch._inductor.config
    torch._inductor.config.fallback_random = True  # eager's random kernels: a compiled run draws eager's numbers
    if not hasattr(torch._dynamo.config, 'trace_autograd_ops'):
        return False
    torch._dynamo.config.trace_autograd_ops = True  # torch.autograd.grad in the graph, not a graph break
    return True


def maybe_compile(model, example, log, training=True):
    """torch.compile `model`, or keep it eager (with a warning) if compiling it fails on the batch `example`.

    The warm-up compiles the evaluation graph, and the training graph unless training=False (a CompiledStep
    compiles the training forward as part of its step); it leaves no trace: BatchNorm statistics, the random number
    generators (drop-path, random channel sampling) and the mode are restored afterwards, so a compiled run computes
    what an eager one does, and resumes exactly."""
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    rng, mode = utils.rng_states(), model.training
    configure_compiler()
    try:
        # dynamic=False: each input shape (the training batch, the test set's last batch) gets its own static
        # graph. With automatic dynamic shapes, which graph a step uses would depend on the shapes seen before it
        # in this process, and a resumed run would compute slightly different numbers than an uninterrupted one.
        compiled = torch.compile(model, dynamic=False, backend=COMPILE_BACKEND)
        if training:
            model.train()
            compiled(example)  # with gradients enabled: compiles the backward graph too
        model.eval()
        with torch.no_grad():
            compiled(example)
    except Exception as e:  # noqa: BLE001 -- compilers fail in many ways; eager always works
        log(f'warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); running eagerly')
        compiled = model
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        utils.set_rng_states(rng)
        model.train(mode)
    return compiled


def can_compile_step(run, use_scaler, log):
    """Whether --compile compiles the whole training step (CompiledStep), or, where it cannot, the forward only."""
    why = ('fp16 loss scaling reads its overflow check back to the host' if use_scaler else
           'under torchrun the gradients are averaged by collectives outside the graph' if run.world_size > 1 else
           f'torch {torch.__version__} cannot trace a backward into a graph' if not configure_compiler() else None)
    if why:
        log(f'--compile compiles the network\'s forward only, not the whole step: {why}')
    return why is None


class CompiledStep:
    """A whole training step, forwards, backwards and optimizer updates, compiled into one graph (fullgraph=True,
    static shapes) and, on a GPU, replayed as a CUDA graph (mode='reduce-overhead').

    What makes a step capturable: its gradients come from torch.autograd.grad, traced into the graph
    (trace_autograd_ops); its optimizers update through optimizer_update, with their state created beforehand and
    their learning rates as tensors on the device, filled from the schedule's float64 values when they change (no
    recompilation, no stale constant in a CUDA graph); it reads nothing back to the host. Random numbers (random
    channel sampling, drop-path) are drawn by the same kernels as in eager mode, so the compiled step computes what the
    eager step does, and resumes exactly.
    If this torch cannot compile a backward, or compiling fails, the step runs eagerly after a warning."""

    def __init__(self, fn, optimizers, device, log):
        self.fn, self.log, self.compiled = fn, log, None
        supported = configure_compiler()
        # Each group's learning rate as a float32 tensor on the device, in its 'lr' during a call only: the schedules
        # compute every epoch's value from the previous one, in float64 as in an eager run, and the step reads it.
        self.learning_rates = [(group, torch.zeros((), dtype=torch.float32, device=device))
                               for optimizer in optimizers for group in optimizer.param_groups]
        for optimizer in optimizers:
            prepare_optimizer(optimizer, device)
        if device.type == 'cuda':  # CUDA graphs read them at fixed addresses
            for _, tensor in self.learning_rates:
                torch._dynamo.mark_static_address(tensor)
        if not supported:
            log(f'warning: torch {torch.__version__} cannot trace a backward into a graph; the step runs eagerly')
            return
        self.cuda_graphs = device.type == 'cuda' and COMPILE_BACKEND == 'inductor'
        self.compiled = torch.compile(fn, fullgraph=True, dynamic=False, backend=COMPILE_BACKEND,
                                      mode='reduce-overhead' if self.cuda_graphs else None)
        self.first_call, self.filled = True, {}

    def __call__(self, *args):
        if self.compiled is None:
            return self.fn(*args)
        values = [group['lr'] for group, _ in self.learning_rates]
        for (group, tensor), value in zip(self.learning_rates, values):
            if value != self.filled.get(id(tensor)):  # once an epoch: a schedule changes it after the epoch
                tensor.fill_(value)
                self.filled[id(tensor)] = value
            group['lr'] = tensor
        try:
            return self.call_compiled(*args)
        finally:  # the schedules and the checkpoint see the float64 values
            for (group, _), value in zip(self.learning_rates, values):
                group['lr'] = value

    def call_compiled(self, *args):
        if self.cuda_graphs:  # a new iteration: the previous replay's outputs have been read
            torch.compiler.cudagraph_mark_step_begin()
        if not self.first_call:
            return self.compiled(*args)
        start = time.perf_counter()
        try:
            # Tracing and code generation come before the graph runs: a failure leaves every tensor untouched.
            result = self.compiled(*args)
        except Exception as e:  # noqa: BLE001 -- compilers fail in many ways; eager always works
            self.log(f'warning: compiling the step failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); '
                     f'running it eagerly')
            self.compiled = None
            return self.fn(*args)
        self.first_call = False
        self.log(f'step compiled into one graph in {time.perf_counter() - start:.1f} s (first call included)')
        return result


def prepare_optimizer(optimizer, device):
    """Make an SGD or Adam(W) optimizer ready for a compiled step: its state as its first step would create it
    (momentum buffers as zeros, which give that first step's result exactly; Adam's step count on the device, also
    a resumed one, which comes back on the CPU); on a GPU, all of it at static addresses for CUDA graphs. (Its
    learning rates: CompiledStep.)"""
    optimizer._opt_called = True  # what optimizer.step() sets, which the schedulers check: it is never called now
    tensors = []
    for group in optimizer.param_groups:
        for p in group['params']:
            state = optimizer_state(optimizer, p)
            if 'step' in state:  # Adam's count with the parameter, so that its update is capturable
                state['step'] = state['step'].to(p.device)
            tensors.extend(state.values())
    if device.type == 'cuda':
        for tensor in tensors:
            torch._dynamo.mark_static_address(tensor)


def optimizer_state(optimizer, p):
    """The state of parameter p in an SGD or Adam(W) optimizer, created as the optimizer's first step creates it."""
    state = optimizer.state[p]
    if isinstance(optimizer, torch.optim.SGD):
        if optimizer.defaults['momentum'] and 'momentum_buffer' not in state:
            state['momentum_buffer'] = torch.zeros_like(p, memory_format=torch.preserve_format)
    elif isinstance(optimizer, torch.optim.Adam):
        if 'step' not in state:  # the count on the CPU, as Adam keeps it unless capturable (prepare_optimizer)
            state['step'] = torch.zeros((), dtype=torch.float32)
            state['exp_avg'] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state['exp_avg_sq'] = torch.zeros_like(p, memory_format=torch.preserve_format)
    else:
        raise UserError(f'a compiled step updates with SGD or Adam(W), not {type(optimizer).__name__}')
    return state


def optimizer_update(optimizer, parameters, grads):
    """optimizer.step() with `grads` for `parameters` instead of their .grad (None: no gradient, the parameter is
    left alone, as step leaves one without .grad): torch.optim's own functional SGD or Adam(W), on the optimizer's
    state. It reads no .grad attribute and nothing back to the host, so it can be traced into a compiled step."""
    grads = {p: g for p, g in zip(parameters, grads) if g is not None}
    with torch.no_grad():
        for group in optimizer.param_groups:
            params = [p for p in group['params'] if p in grads]
            if not params:
                continue
            state = [optimizer_state(optimizer, p) for p in params]
            common = dict(weight_decay=group['weight_decay'], lr=group['lr'], maximize=group['maximize'],
                          foreach=group['foreach'])
            if isinstance(optimizer, torch.optim.SGD):
                momentum = group['momentum']
                functional_sgd(params, [grads[p] for p in params],
                               [s['momentum_buffer'] for s in state] if momentum else [None] * len(params),
                               momentum=momentum, dampening=group['dampening'], nesterov=group['nesterov'], **common)
            else:
                functional_adam(params, [grads[p] for p in params], [s['exp_avg'] for s in state],
                                [s['exp_avg_sq'] for s in state], [], [s['step'] for s in state],
                                amsgrad=False, beta1=group['betas'][0], beta2=group['betas'][1], eps=group['eps'],
                                capturable=state[0]['step'].device.type != 'cpu',
                                decoupled_weight_decay=group.get('decoupled_weight_decay', False), **common)




@dataclass
class WeightUpdate:
    """An optimiser step of a set of parameters: backward (to these parameters only), loss scaling, gradient
    sync across processes (when DistributedDataParallel does not), clipping. Both scripts' weight steps use it."""
    parameters: list
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    grad_clip: float
    amp_dtype: Optional[torch.dtype] = None
    grad_sync: Optional[Callable] = None
    # In a compiled step (CompiledStep): gradients from torch.autograd.grad, the update by optimizer_update; no .grad
    # attribute is written, nothing is read back to the host (so no fp16 loss scaling, whose step does).
    functional: bool = False

    def zero_grad(self):
        if not self.functional:
            self.optimizer.zero_grad(set_to_none=True)

    def apply(self, loss):
        if self.functional:
            grads = torch.autograd.grad(loss, self.parameters, allow_unused=True)
            if self.grad_sync is not None:
                self.grad_sync(grads)
            if self.grad_clip:  # as clip_grad_norm_, on the gradients themselves
                present = [g for g in grads if g is not None]
                norm = torch.nn.utils.get_total_norm(present)
                torch._foreach_mul_(present, (self.grad_clip / (norm + 1e-6)).clamp(max=1.0))
            optimizer_update(self.optimizer, self.parameters, grads)
            return
        self.scaler.scale(loss).backward(inputs=self.parameters)
        self.scaler.unscale_(self.optimizer)
        if self.grad_sync is not None:
            self.grad_sync([p.grad for p in self.parameters])
        if self.grad_clip:  # 0: no clipping (the baselines' papers clip nothing)
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
