"""Mixed memory (Lechner & Hasani 2020): an LSTM cell that runs beside a liquid cell.

At each step the LSTM reads the input and the liquid state h, and its new output becomes the
liquid state the cell then updates; its cell state c is the long-term memory. Parameter names,
initialisation and gate order are those of ncps.torch.LSTMCell, so ncps weights load unchanged.

Shape legend: B batch, I input features, U units (state).
"""

from __future__ import annotations

import torch
from torch import nn

from . import functional
from ._checks import check_int


class LSTMCell(nn.Module):
    """One LSTM step with the forget-gate bias +1 of ncps.

    z = W_in x + b_in + W_rec h      (4U, split into i, input gate, forget gate, output gate)
    c' = c ⊙ σ(f + 1) + tanh(i) ⊙ σ(ig)
    h' = tanh(c') ⊙ σ(o)

    Shapes: inputs (B, I), states (h, c) each (B, U) -> (h', c').
    Init (ncps): biases U(-0.1, 0.1), input weight Xavier-uniform, recurrent weight orthogonal.

    Example:
        >>> cell = LSTMCell(3, 5)
        >>> h, c = cell(torch.randn(2, 3), (torch.zeros(2, 5), torch.zeros(2, 5)))
        >>> tuple(h.shape), tuple(c.shape)
        ((2, 5), (2, 5))
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self.input_map = nn.Linear(input_size, 4 * hidden_size, bias=True)
        self.recurrent_map = nn.Linear(hidden_size, 4 * hidden_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        for w in self.input_map.parameters():
            if w.dim() == 1:
                nn.init.uniform_(w, -0.1, 0.1)
            else:
                nn.init.xavier_uniform_(w)
        for w in self.recurrent_map.parameters():
            if w.dim() == 1:
                nn.init.uniform_(w, -0.1, 0.1)
            else:
                nn.init.orthogonal_(w)

    def forward(self, inputs: torch.Tensor, states: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h_BU, c_BU = states
        return functional.lstm_memory_step(
            inputs, h_BU, c_BU, self.input_map.weight, self.input_map.bias, self.recurrent_map.weight
        )
