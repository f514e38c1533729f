def is_valid_isbn10(text):
    chars = text.replace("-", "")
    if len(chars) != 10:
        return False
    total = 0
    for i, c in enumerate(chars):
        if c in "0123456789":
            value = int(c)
        elif c == "X" and i == 9:
            value = 10
        else:
            return False
        total += value * (10 - i)
    return total % 11 == 0
