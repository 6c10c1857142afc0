"""torchliquid: fast Liquid Time-Constant (LTC) and Closed-form Continuous-time (CfC) networks."""

__version__ = "0.1.0"
