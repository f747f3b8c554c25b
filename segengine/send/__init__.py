"""Sending a campaign over SMTP (docs/sending.md); see docs/sending.md.

`send_campaign` is the whole send; `SendOptions` its settings; it returns a
`SendSummary` (or a `Preview` for a dry run). `verify_token` checks the unsubscribe
token an unsubscribe endpoint receives.
"""

from .campaign import (
    CampaignBusy,
    Preview,
    SendInterrupted,
    SendOptions,
    SendSummary,
    send_campaign,
)
from .tokens import verify_token

__all__ = [
    "CampaignBusy",
    "Preview",
    "SendInterrupted",
    "SendOptions",
    "SendSummary",
    "send_campaign",
    "verify_token",
]
