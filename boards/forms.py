"""Forms of the live board. They parse and bound what a person sends; the rules
(WIP limits, which moves are allowed, what a valid task is) live in
``boards.services``, whose ValidationErrors the views attach to these forms."""

from __future__ import annotations

from django import forms

from boards.models import Board, Task


class TaskCreateForm(forms.Form):
    title = forms.CharField(
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "What needs doing?", "autocomplete": "off"}),
    )
    input = forms.CharField(
        required=False,
        label="Input",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "The text the agent works on"}),
    )
    # A CharField with a select, not a ChoiceField: a capability no agent offers is
    # refused by the service with a message that lists what is offered, and that is
    # the message people should see.
    capability = forms.CharField(required=False, widget=forms.Select)
    priority = forms.IntegerField(
        required=False,
        initial=0,
        min_value=-1000,
        max_value=1000,
        help_text="Higher runs first.",
        widget=forms.NumberInput(attrs={"step": 1}),
    )

    def __init__(self, *args, capabilities: list[str], **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["capability"].widget.choices = [("", "Any agent"), *((c, c) for c in capabilities)]


class TaskMoveForm(forms.Form):
    column = forms.IntegerField(min_value=1)
    # The card the moved one now precedes; empty puts it where the column's rules say.
    before = forms.IntegerField(required=False, min_value=1)

    def __init__(self, *args, board: Board, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.board = board

    def clean_column(self):
        pk = self.cleaned_data["column"]
        column = self.board.columns.filter(pk=pk).first()
        if column is None:
            raise forms.ValidationError("That column is not on this board.")
        return column

    def clean_before(self) -> Task | None:
        pk = self.cleaned_data.get("before")
        if pk is None:
            return None
        before = Task.objects.filter(board=self.board, pk=pk).first()
        if before is None:
            raise forms.ValidationError("The card to place this one before is not on this board.")
        return before


class TaskStepForm(forms.Form):
    direction = forms.ChoiceField(
        choices=[("up", "up"), ("down", "down"), ("left", "left"), ("right", "right")],
        error_messages={"invalid_choice": "Use up, down, left or right."},
    )


class TaskBlockForm(forms.Form):
    # Not required here: the service refuses an empty note with the message people see.
    note = forms.CharField(
        required=False,
        max_length=2000,
        label="What blocks it?",
        widget=forms.Textarea(attrs={"rows": 2, "placeholder": "Waiting for the supplier's data sheet"}),
    )

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
