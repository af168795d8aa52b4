"""A plain Thespian actor, for the tests of systems Slither does not manage."""

from thespian.actors import Actor


class Echo(Actor):
    def receiveMessage(self, message, sender):
        if isinstance(message, str):
            self.send(sender, f"echo:{message}")
