def mask(text):
    if len(text) <= 4:
        return text
    return "#" * (len(text) - 4) + text[-4:]
