"""What the distributed tests launch under torchrun: run a script as __main__, then say whether the process group
was freed. A group that outlives the run keeps Gloo's worker threads alive into interpreter shutdown, where one of
them still releasing a tensor aborts the process (an intermittent SIGABRT after a successful run)."""
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


utils.init_distributed = recording_init_distributed
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name='__main__')
print(f'process group freed: {bool(group_refs) and group_refs[0]() is None}')
