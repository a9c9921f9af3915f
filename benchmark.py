"""Speed and size of the search step, a trained network (GLA-FERNet's discrete one or a baseline) and the data
pipeline on the current device."""
import argparse

import cli
import genotypes
import recipes

parser = argparse.ArgumentParser('benchmark', description=__doc__)
parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto', help='where to measure')
parser.add_argument('--batch_size', type=cli.positive_int, default=64, help='batch size of the training steps')
parser.add_argument('--init_channels', type=cli.positive_int, default=16, help='supernet init channels')
parser.add_argument('--layers', type=cli.positive_int, default=8, help='layers of both networks')
parser.add_argument('--eval_channels', type=cli.positive_int, default=36, help='discrete network (GLA_FERNet) init channels')
parser.add_argument('--model', choices=list(recipes.MODELS), default='gla_fernet',
                    help="the trained network to measure (gla_fernet: GLA_FERNet's genotype, --eval_channels and "
                         "--layers; the baselines as train.py builds them by default)")
parser.add_argument('--skip_search', action='store_true', help='measure the network alone: no search step, no data pipeline')
parser.add_argument('--image_size', type=cli.positive_int, default=48, help='input size')
parser.add_argument('--method', choices=list(genotypes.METHODS), default='gla_fernet',
                    help="the search method whose supernet's step is measured (its op weights, edge weights, k and "
                         "candidate operations; --layers and --init_channels stay this script's)")
parser.add_argument('--sampling', choices=['sequential', 'random'], default='sequential', help='supernet variant')
parser.add_argument('--k', type=cli.positive_int, default=4, help="partial-channel ratio (default: the method's)")
parser.add_argument('--steps', type=cli.positive_int, default=10, help='timed steps per repeat')
parser.add_argument('--repeats', type=cli.positive_int, default=5, help='repeats; the median and the spread are reported')
parser.add_argument('--amp', action='store_true', help='mixed precision (bf16 where supported, else fp16)')
parser.add_argument('--compile', action='store_true',
                    help='compile the search step and the training step whole, as --compile does in the scripts')
parser.add_argument('--compile_backend', choices=['inductor', 'aot_eager'], default='inductor',
                    help='aot_eager: the captured graph run operator by operator (no code generation): '
                         'what capture alone saves')
parser.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=True,
                    help='channels-last discrete network (train.py default)')
parser.add_argument('--search_channels_last', action='store_true', help='channels-last supernet (train_search.py: off)')
parser.add_argument('--skip_unrolled', action='store_true', help='do not time the second-order search step')
parser.add_argument('--json', default=None, help='also write the results to this JSON file')
parser.add_argument('--latency_table', default=None,
                    help="measure only the batch-1 latency of every candidate operation of --method at every cell's "
                         "shape of the discrete network (--eval_channels, --layers, --image_size, --stem_stride, "
                         "--stem_multiplier, --num_classes), and write it to this JSON file for "
                         "train_search.py --latency_table")
parser.add_argument('--stem_stride', type=cli.positive_int, default=genotypes.DISCRETE_NETWORK['stem_stride'],
                    help="discrete network's stem stride (train.py --stem_stride)")
parser.add_argument('--stem_multiplier', type=cli.positive_int, default=genotypes.DISCRETE_NETWORK['stem_multiplier'],
                    help="discrete network's stem multiplier (train.py --stem_multiplier)")
parser.add_argument('--num_classes', type=cli.positive_int, default=7, help='classes of the discrete network')

def parse_args(argv=None):
    """The flags, with the method's k unless --k is given."""
    args = parser.parse_args(argv)
    fixed_size = recipes.MODELS[args.model].fixed_image_size  # DDAMFN, EfficientFace: the one size they take
    cli.apply_recipe(parser, args, {'k': genotypes.METHODS[args.method]['supernet']['k'],
                                    **({'image_size': fixed_size} if fixed_size else {})}, argv)
    if args.sampling == 'random' and args.k == 1:
        parser.error(f'argument --sampling: random sampling needs --k above 1 (--method {args.method} has k=1)')
    return args


if __name__ == '__main__':
    ARGS = parse_args()  # before torch is imported: --help answers at once

import contextlib  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import budget  # noqa: E402
import data_loader  # noqa: E402
import noise  # noqa: E402
import run_folder  # noqa: E402
import training_step  # noqa: E402
import utils  # noqa: E402
from architect import Architect  # noqa: E402
from baselines import create_model  # noqa: E402
from train_search import SUPERNETS, search_step  # noqa: E402


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(fn, device, steps, repeats, warmup=3):
    """Seconds per call of fn: median, min and max over repeats of `steps` calls, after warm-up."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times), min(times), max(times)


def operator_calls(fn):
    """The ATen operators one call of fn runs (the profiler's events, nested calls included, as the dispatcher sees
    them): a count that depends on the code, not on the device or its speed; each is at least one kernel launch on
    a GPU, where a step of many small operators is bound by their number."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
    return sum(1 for event in profile.events() if event.name.startswith('aten::'))


def peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10  # Linux reports KiB


def compiled(fn, optimizers, updates, device, args, use_scaler, results, key, log):
    """fn itself, or with --compile fn as CompiledStep compiles it (not with fp16 loss scaling, as in the scripts);
    its first call (the compilation) timed."""
    if args.compile and use_scaler:
        log(f'{key}: not compiled whole: fp16 loss scaling reads its overflow check back to the host')
    if not args.compile or use_scaler:
        return fn
    for update in updates:
        update.functional = True
    step = training_step.CompiledStep(fn, optimizers, device, log)
    start = time.perf_counter()
    step()
    synchronize(device)
    results[f'{key}_compile_s'] = time.perf_counter() - start
    return step


def time_search(args, x, y, device, amp_dtype, use_scaler, search_format, results, record, log):
    """The search step (first order, and --unrolled unless skipped) and its per-call overhead."""
    batch = args.batch_size
    # One architecture step on a held-out batch, then one weight step (train_search.search_step).
    settings = genotypes.supernet_settings({**genotypes.METHODS[args.method]['supernet'], 'k': args.k})
    supernet = SUPERNETS[args.sampling](args.init_channels, 7, args.layers, image_size=args.image_size, **settings)
    supernet = supernet.to(device, memory_format=search_format)
    results['supernet_params'] = utils.count_parameters(supernet, supernet.arch_parameters())
    optimizer = torch.optim.SGD(supernet.weight_parameters(), 0.1, momentum=0.9, weight_decay=3e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    update = training_step.WeightUpdate(supernet.weight_parameters(), optimizer, scaler, 5.0, amp_dtype)
    architect = Architect(supernet, optimizer, 6e-4, 1e-3)
    optimizers = [optimizer, architect.optimizer]
    for unrolled in ([False] if args.skip_unrolled else [False, True]):
        key = 'search_step_unrolled' if unrolled else 'search_step'
        step = compiled(lambda: search_step(supernet, architect, update, (x, y), (x, y), unrolled), optimizers,
                        [update], device, args, use_scaler, results, key, log)
        record(f'{key}_img_s', time_calls(step, device, args.steps if not unrolled else max(args.steps // 2, 1),
                                          args.repeats), batch)
        if not unrolled:
            results['search_step_operator_calls'] = operator_calls(step)

    # The same step on 2 images of 16x16: the arithmetic is negligible, so this is the per-call overhead (Python,
    # dispatch, kernel launches) that bounds a step of many small kernels, as the supernet's are on a GPU.
    tiny_x, tiny_y = x[:2, :, :16, :16].contiguous(memory_format=search_format), y[:2]
    overhead_step = compiled(lambda: search_step(supernet, architect, update, (tiny_x, tiny_y), (tiny_x, tiny_y),
                                                 False), optimizers, [update], device, args, use_scaler,
                             results, 'search_step_overhead', log)
    record('search_step_overhead_ms', time_calls(overhead_step, device, args.steps, args.repeats), 1, unit='ms')


def time_data(args, batch, device, results, rows):
    """The real pipeline: a generated synthetic RAF-DB folder, decoded, augmented on the device."""
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stdout(None):
        from synthetic import make_synthetic
        # 20 batches a pass: enough for a steady rate, and a small --batch_size generates a small set
        make_synthetic(f'{root}/synthetic', n_train=20 * batch, n_test=21, seed=0, log=lambda *a: None)
        train_set = data_loader.load_dataset('rafdb', f'{root}/synthetic', cache_dir=root, log=lambda *a: None).train
        loader = data_loader.DeviceLoader(train_set.images, train_set.labels, batch, device, args.image_size,
                                          augment=True, shuffle=True, drop_last=True)
        data_loader.measure_throughput(loader)  # warm-up
        results['data_img_s'] = statistics.median(data_loader.measure_throughput(loader) for _ in range(3))
    rows.append(('data_img_s', f'{results["data_img_s"]:10.1f} img/s', '', ''))


def write_latency_table(args, device, log):
    """benchmark.py --latency_table: the table, and how well its sum predicts the measured latency of GLA-FERNet's
    network and of the cheapest one (every operation a 3x3 max-pool) at the same target."""
    target = budget.Target(args.eval_channels, args.layers, args.image_size, args.stem_stride, args.stem_multiplier,
                           args.num_classes)
    primitives = genotypes.METHODS[args.method]['supernet']['primitives']

    def time_ms(fn):
        return 1e3 * time_calls(fn, device, args.steps, args.repeats)[0]

    log(f'latency table of {target.describe()}: {len(primitives) - 1} operations of --method {args.method}')
    table = budget.measure_latency_table(target, primitives, device, time_ms)
    table.update(device=device_name(device), torch=torch.__version__, steps=args.steps, repeats=args.repeats)
    run_folder.write_json(args.latency_table, table)
    latency = budget.LatencyTable(table, args.latency_table)
    log(f'wrote {len(table["operations"])} operation latencies to {args.latency_table}; fixed part '
        f'{table["fixed_ms"]:.3f} ms')
    for name, genotype in (('GLA_FERNet', genotypes.GLA_FERNet), ('3x3 max-pools', budget.pooling_genotype())):
        network = target.network(genotype).to(device).eval()
        image = torch.randn(1, 3, args.image_size, args.image_size, device=device)
        with torch.no_grad():
            measured = time_ms(lambda: network(image))
        log(f'{name}: the table predicts {latency.genotype_ms(genotype):.3f} ms, measured {measured:.3f} ms')


def device_name(device):
    return (torch.cuda.get_device_name(device) if device.type == 'cuda'
            else f'{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)')


def main(args, log):
    device, _, _ = utils.init_distributed(args.device)
    if args.latency_table:
        return write_latency_table(args, device, log)
    training_step.COMPILE_BACKEND = args.compile_backend
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = device.type == 'cuda'
    amp_dtype, use_scaler = utils.amp_settings(device, args.amp)
    search_format = torch.channels_last if args.search_channels_last else torch.contiguous_format
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    batch = args.batch_size
    x = torch.randn(batch, 3, args.image_size, args.image_size, device=device).contiguous(memory_format=search_format)
    y = torch.randint(0, 7, (batch,), device=device)
    results, spread, rows = {}, {}, []

    def record(key, seconds, images, unit='img/s'):
        median, low, high = seconds
        if unit == 'img/s':
            results[key], spread[key] = images / median, [images / high, images / low]
            rows.append((key, f'{images / median:10.1f} img/s', f'{1e3 * median:9.2f} ms',
                         f'[{images / high:.1f}, {images / low:.1f}]'))
        else:
            results[key], spread[key] = 1e3 * median, [1e3 * low, 1e3 * high]
            rows.append((key, f'{1e3 * median:10.2f} ms', '', f'[{1e3 * low:.2f}, {1e3 * high:.2f}]'))

    if not args.skip_search:
        time_search(args, x, y, device, amp_dtype, use_scaler, search_format, results, record, log)
    # The trained network: training step, evaluation, batch-1 latency.
    if args.model == 'gla_fernet':
        net = create_model('gla_fernet', 7, genotype=genotypes.GLA_FERNet, init_channels=args.eval_channels,
                           layers=args.layers, image_size=args.image_size)
    else:
        net = create_model(args.model, 7)
    net = net.to(device)
    results['eval_params'] = utils.count_parameters(net, noise.kept_parameters(net))  # what train.py counts
    results['eval_weights'] = utils.count_weights(net)
    results['eval_flops'] = utils.count_flops(net, args.image_size, device)
    results['eval_macs'] = results['eval_flops'] // 2
    net = net.to(memory_format=memory_format)
    if hasattr(net, 'drop_path_prob'):
        net.drop_path_prob.fill_(0.2)
    x = x.contiguous(memory_format=memory_format)
    forward_net = training_step.maybe_compile(net, x, log, training=False) if args.compile else net
    optimizer = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9, weight_decay=3e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    update = training_step.WeightUpdate(list(net.parameters()), optimizer, scaler, 5.0, amp_dtype)
    # A two-branch network (RLR-CNet) learns from two batches per step: the images counted are the first batch's.
    inputs, targets = (x,), (y,)
    if recipes.MODELS[args.model].two_branch:
        alpha = torch.tensor(0.5, device=device)
        inputs, targets = (x, x, alpha), (y, y, alpha)
    loss = noise.CrossEntropy(argparse.Namespace(label_smoothing=0.0, auxiliary_weight=0.4), y, None, None).loss
    net.train()
    step = compiled(lambda: training_step.weight_step(net, update, inputs, targets, loss), [optimizer], [update],
                    device, args, use_scaler, results, 'train_step', log)
    record('train_step_img_s', time_calls(step, device, args.steps, args.repeats), batch)
    results['train_step_operator_calls'] = operator_calls(step)
    forward_net.eval()
    eval_batch = torch.randn(4 * batch, 3, args.image_size, args.image_size, device=device).contiguous(
        memory_format=memory_format)
    with torch.no_grad(), utils.autocast(device, amp_dtype):
        record('eval_img_s', time_calls(lambda: forward_net(eval_batch), device, args.steps, args.repeats), 4 * batch)
        single = x[:1].contiguous(memory_format=memory_format)
        record('latency_bs1_ms', time_calls(lambda: net(single), device, args.steps * 2, args.repeats), 1, unit='ms')
    results['peak_mem_mb'] = peak_memory_mb(device)

    if not args.skip_search:
        time_data(args, batch, device, results, rows)
    config = {key: getattr(args, key) for key in ('model', 'batch_size', 'init_channels', 'layers', 'eval_channels',
                                                  'image_size', 'method', 'sampling', 'k', 'amp', 'compile',
                                                  'compile_backend', 'channels_last', 'search_channels_last',
                                                  'skip_search', 'steps', 'repeats')}
    results.update(spread=spread, config=config, torch=torch.__version__, cuda=torch.version.cuda,
                   device=device_name(device))
    print_results(results, rows, args.model)
    if args.json:
        run_folder.write_json(args.json, results)


def print_results(results, rows, model):
    """The measurements as a table, then the sizes, compilation times and operator counts."""
    config = results['config']
    print(f'device: {results["device"]}, torch {results["torch"]}, CUDA {results["cuda"]}')
    print('config: ' + ', '.join(f'{k}={v}' for k, v in config.items()))
    print(f'{"measure":28s} {"median":>16s} {"per step":>12s}  spread [min, max]')
    for row in rows:
        print(f'{row[0]:28s} {row[1]:>16s} {row[2]:>12s}  {row[3]}')
    print(f'peak memory {results["peak_mem_mb"]:.0f} MB; ' +
          (f'supernet {results["supernet_params"]:,} parameters; ' if 'supernet_params' in results else '') +
          f'{model} {results["eval_params"]:,} parameters ({results["eval_weights"]:,} convolution and linear '
          f'weights), {results["eval_flops"] / 1e6:.1f} MFLOPs = {results["eval_macs"] / 1e6:.1f} M multiply-adds')
    compile_times = {key: value for key, value in results.items() if key.endswith('_compile_s')}
    if compile_times:
        print('compilation (first call): ' + ', '.join(f'{key[:-len("_compile_s")]} {value:.1f} s'
                                                       for key, value in compile_times.items()))
    print('operator calls per step: ' + ', '.join(f'{key.replace("_operator_calls", "")} {value:,}'
                                                  for key, value in results.items() if key.endswith('_operator_calls')))


if __name__ == '__main__':
    utils.run_main(main, ARGS)
