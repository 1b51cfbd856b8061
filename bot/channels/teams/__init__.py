"""Microsoft Teams front end on the Teams SDK for Python (`microsoft-teams-apps`): incoming
activities authenticated and translated for the conversation core (`app.py`, `auth.py`,
`text.py`), Adaptive Cards out (`cards.py`) through the Bot Connector (`chat.py`), the app
package (`package.py`) and the conversation references it keeps (`refs.py`)."""
