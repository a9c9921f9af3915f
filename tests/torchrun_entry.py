"""What the distributed tests launch under torchrun: run a script as __main__, then say whether the process group
was freed. A group that outlives the run keeps Gloo's worker threads alive into interpreter shutdown, where one of
them still releasing a tensor aborts the process (an intermittent SIGABRT after a successful run).

With RECORD_DRAWS=FOLDER in the environment, each process of a train.py run also saves FOLDER/rank<RANK>.pt, what
the tests compare across processes: its first augmented batch (the source images, the generator's state before the
augmentation drew from it, the result) and, for each epoch, its noise method's generator state, the per-sample
record of its steps (indices, scores, flipped) and the epoch's record (end_epoch, what the run logs)."""
import dataclasses
import os
import runpy
import sys
import weakref

import torch.distributed as dist

import utils

group_refs = []
init_distributed = utils.init_distributed


def recording_init_distributed(*args, **kwargs):
    result = init_distributed(*args, **kwargs)
    group_refs.append(weakref.ref(dist.group.WORLD))
    return result


def record_draws():
    """Wrap the loader's batch preparation and the noise method's epoch and step; returns what they record."""
    import data_loader
    import noise
    draws = {'batch': None, 'epochs': []}
    prepare_batch = data_loader.prepare_batch
    method = noise.CrossEntropy
    set_epoch, after_step, end_epoch = method.set_epoch, method.after_step, method.end_epoch

    def recording_prepare_batch(images, image_size, augment=False, generator=None, normalise=None):
        first = generator is not None and draws['batch'] is None
        state = generator.get_state() if first else None
        x = prepare_batch(images, image_size, augment, generator, normalise)
        if first:
            draws['batch'] = {'images': images.clone(), 'image_size': image_size, 'state': state,
                              'augment': dataclasses.asdict(augment), 'augmented': x.clone()}
        return x

    def recording_set_epoch(self, epoch):
        set_epoch(self, epoch)
        draws['epochs'].append({'epoch': epoch, 'generator': self.generator.get_state(), 'index': [], 'scores': [],
                                'flipped': []})

    def recording_after_step(self, logits, y, score, index):
        after_step(self, logits, y, score, index)
        steps = draws['epochs'][-1]
        for name, value in (('index', index), ('scores', self.scores[index]), ('flipped', self.flipped[index])):
            steps[name].append(value.clone())

    def recording_end_epoch(self):
        draws['epochs'][-1]['record'] = record = end_epoch(self)
        return record

    data_loader.prepare_batch = recording_prepare_batch
    method.set_epoch, method.after_step = recording_set_epoch, recording_after_step
    method.end_epoch = recording_end_epoch
    return draws


utils.init_distributed = recording_init_distributed
record_folder = os.environ.get('RECORD_DRAWS')
draws = record_draws() if record_folder else None
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name='__main__')
if draws is not None:
    import torch
    torch.save(draws, os.path.join(record_folder, f'rank{os.environ["RANK"]}.pt'))
print(f'process group freed: {bool(group_refs) and group_refs[0]() is None}')
