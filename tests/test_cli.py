"""cli.py: the shared flags, recipes as defaults of existing flags, and the resume rule."""
import pytest

import cli


def parser():
    return cli.training_parser('demo', 'a training script', seed=0, channels_last=False)


def test_recipe_sets_only_the_flags_not_given():
    def recipe(args):
        return 'paper', {'batch_size': 16, 'learning_rate': 0.007, 'seed': 5}
    args = cli.parse(parser(), recipe=recipe, argv=['--batch_size', '32'])
    assert args.recipe == 'paper'
    assert (args.batch_size, args.learning_rate, args.seed) == (32, 0.007, 5)  # given beats the recipe
    assert args.data == cli.DEFAULT_ROOTS['synthetic']  # the folder a run reads is recorded, not None


def test_resumed_run_takes_new_places_to_run_but_refuses_a_new_experiment():
    saved = vars(cli.parse(parser(), argv=['--batch_size', '32', '--data', 'old/place']))
    resumed = cli.resumed_args(parser(), saved, argv=['--resume', 'run', '--data', 'new/place', '--workers', '0'])
    assert (resumed.data, resumed.workers, resumed.batch_size, resumed.resume) == ('new/place', 0, 32, 'run')
    same = cli.resumed_args(parser(), saved, argv=['--resume', 'run', '--batch_size', '32'])
    assert same.batch_size == 32
    with pytest.raises(cli.UserError, match="--learning_rate 0.5 differs from the resumed run's --learning_rate 0.1"):
        cli.resumed_args(parser(), saved, argv=['--resume', 'run', '--learning_rate', '0.5'])


def test_flags_added_since_a_run_started_take_their_defaults():
    saved = {k: v for k, v in vars(cli.parse(parser(), argv=[])).items() if k != 'grad_clip'}
    assert cli.resumed_args(parser(), saved, argv=['--resume', 'run']).grad_clip == 5


def test_data_flags_repeat_what_the_run_read():
    args = cli.parse(parser(), argv=['--dataset', 'rafdb', '--data', 'raf', '--noise', '20', '--image_size', '64'])
    assert cli.data_flags(args) == '--dataset rafdb --data raf --image_size 64 --noise 20'
