"""Which epochs a training run reports besides its last: the best test epoch (optimistic, the released best_acc), the
best validation epoch, and the mean of the last 5 epochs (as the noisy-label FER papers report); kept in the
checkpoint, so that a resumed run goes on with them. Imports no torch."""

NOT_YET = {'epoch': -1, 'accuracy': -1.0}  # a selection record before any epoch
SUMMARY = ('accuracy', 'balanced_accuracy', 'f1', 'loss')  # the validation figures a selection record keeps
LAST_SUMMARY = ('epoch', 'accuracy', 'balanced_accuracy', 'f1')
LAST_EPOCHS = 5  # EAC reports the mean test accuracy of its last 5 epochs (EAC issue 2), as noisy-label FER papers do


class Selection:
    """The epochs a run reports besides the last, each a record of its test metrics: test_selected (best test
    accuracy: optimistic, the released best_acc) and val_selected (best validation accuracy, with the validation
    figures as val_*); and last5_mean, the mean test figures of the last LAST_EPOCHS epochs (of those run, when
    fewer). best.pt holds the weights of `best_pt`'s epoch: val_selected where there is a validation set."""

    def __init__(self, has_validation, log):
        self.best = {'test_selected': NOT_YET, 'val_selected': NOT_YET}
        self.best_pt = 'val_selected' if has_validation else 'test_selected'
        log('best.pt: the epoch of best ' + ('validation accuracy' if has_validation else
                                              'TEST accuracy (no validation set: give --val_portion for an unbiased one)'))

    def update(self, epoch, last, valid):
        if 'test_selected' not in self.best:  # a run started before validation selection recorded one record
            self.best = {'test_selected': self.best, 'val_selected': NOT_YET}
        last['epoch'] = epoch
        if 'recent' in self.best:  # the name of a run started before it was called so
            self.best['last_epochs'] = self.best.pop('recent')
        # the last LAST_EPOCHS epochs' test figures, in the checkpoint's record, so a resumed run goes on with them
        window = self.best.get('last_epochs', [])
        self.best['last_epochs'] = window[-(LAST_EPOCHS - 1):] + [{key: last[key] for key in LAST_SUMMARY}]
        if last['accuracy'] > self.best['test_selected']['accuracy']:
            self.best['test_selected'] = dict(last)
        if valid is not None and valid['accuracy'] > self.best['val_selected'].get('val_accuracy', -1.0):
            self.best['val_selected'] = {**last, **{f'val_{key}': valid[key] for key in SUMMARY}}

    def records(self):
        """metrics.json's selection records."""
        window = self.best.get('last_epochs', self.best.get('recent', []))
        last5 = {'epoch': window[-1]['epoch'], 'epochs': len(window),
                 **{key: sum(r[key] for r in window) / len(window) for key in LAST_SUMMARY if key != 'epoch'}}
        return {'best_pt': self.best_pt, 'test_selected': self.best['test_selected'],
                **({'val_selected': self.best['val_selected']} if self.best_pt == 'val_selected' else {}),
                **({'last5_mean': last5} if window else {})}
