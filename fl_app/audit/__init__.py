"""The privacy audit: what a curious server, or a model's users, can learn from what
this app sends and publishes (tooling: never imported by the app).

``reconstruction``: inputs read back from one client's update as the server's
pipeline receives it; ``membership``: whether an example was in a model's training
set, from its loss; ``canaries``: the ε a DP run really gives, from canary clients.
"""
