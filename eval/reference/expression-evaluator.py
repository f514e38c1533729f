def _tokens(expression):
    tokens = []
    i = 0
    while i < len(expression):
        c = expression[i]
        if c.isspace():
            i += 1
        elif c in "0123456789":
            j = i
            while j < len(expression) and expression[j] in "0123456789":
                j += 1
            tokens.append(int(expression[i:j]))
            i = j
        elif c in "+-*/()":
            tokens.append(c)
            i += 1
        else:
            raise ValueError(f"unexpected character {c!r}")
    return tokens


def evaluate(expression):
    tokens = _tokens(expression)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("unexpected end of expression")
        pos += 1
        return tokens[pos - 1]

    def expr():
        value = term()
        while peek() in ("+", "-"):
            if take() == "+":
                value = value + term()
            else:
                value = value - term()
        return value

    def term():
        value = unary()
        while peek() in ("*", "/"):
            if take() == "*":
                value = value * unary()
            else:
                value = value / unary()
        return value

    def unary():
        if peek() == "-":
            take()
            return -unary()
        return atom()

    def atom():
        token = take()
        if token == "(":
            value = expr()
            if take() != ")":
                raise ValueError("expected ')'")
            return value
        if isinstance(token, int):
            return token
        raise ValueError(f"unexpected {token!r}")

    value = expr()
    if pos != len(tokens):
        raise ValueError(f"unexpected {tokens[pos]!r}")
    return value
