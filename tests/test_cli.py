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


@pytest.mark.parametrize('argv, message', [
    (['--dataset', 'fer2013', '--noise', '10'], 'argument --noise: applies to --dataset rafdb or synthetic only, not '
                                                'fer2013'),
    (['--dataset', 'rafdb', '--ferplus_labels', 'x.csv'], 'argument --ferplus_labels: applies to --dataset fer2013'),
    (['--dataset', 'rafdb', '--folds', '5'], 'argument --folds: applies to --dataset ckplus or folder only'),
    (['--dataset', 'ckplus', '--class_names', 'a,b'], 'argument --class_names: applies to --dataset folder only'),
    (['--dataset', 'affectnet', '--ckplus_neutral'], 'argument --ckplus_neutral: applies to --dataset ckplus only'),
    (['--dataset', 'ckplus', '--fold', '10'], 'argument --fold: 10 is not one of the folds 0..9 of --folds 10'),
    (['--dataset', 'folder', '--data', 'f', '--fold', '1'], 'argument --fold: give --folds too'),
    (['--dataset', 'folder', '--data', 'f', '--folds', '1'], 'argument --folds: 1 fold leaves nothing'),
    (['--dataset', 'folder'], '--dataset folder needs --data'),
    (['--dataset', 'folder', '--data', 'f', '--class_names', 'a,,b'], 'argument --class_names: expected distinct'),
    (['--dataset', 'folder', '--data', 'f', '--subject_regex', '(S'], "argument --subject_regex: '(S' is not a "
                                                                      "regular expression"),
])
def test_dataset_flags_that_do_not_apply_or_fit_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        cli.parse(parser(), argv=argv)
    assert message in capsys.readouterr().err


def test_ckplus_runs_record_their_folds_and_suggested_commands_repeat_them():
    args = cli.parse(parser(), argv=['--dataset', 'ckplus', '--ckplus_classes', '6', '--ckplus_neutral'])
    assert (args.data, args.folds, args.fold) == ('data/CK+', 10, 0)
    assert cli.data_flags(args) == ('--dataset ckplus --data data/CK+ --image_size 48 --ckplus_classes 6 '
                                    '--ckplus_neutral --folds 10 --fold 0')
    args = cli.parse(parser(), argv=['--dataset', 'folder', '--data', 'my data', '--folds', '26', '--fold', '3',
                                     '--subject_regex', r'sub(\d+)', '--class_names', 'neg,pos,sur'])
    assert args.class_names == ['neg', 'pos', 'sur']
    assert cli.data_flags(args) == ("--dataset folder --data 'my data' --image_size 48 --folds 26 --fold 3 "
                                    "--class_names neg,pos,sur --subject_regex 'sub(\\d+)'")
    args = cli.parse(parser(), argv=['--dataset', 'fer2013', '--ferplus_labels', 'fer2013new.csv'])
    assert cli.data_flags(args) == ('--dataset fer2013 --data data/fer2013/fer2013.csv --image_size 48 '
                                    '--ferplus_labels fer2013new.csv')
