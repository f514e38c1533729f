def rle_encode(text):
    out = []
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and text[j] == text[i]:
            j += 1
        out.append(f"{j - i}{text[i]}")
        i = j
    return "".join(out)


def rle_decode(encoded):
    out = []
    count = ""
    for c in encoded:
        if c.isdigit():
            count += c
        else:
            out.append(c * int(count))
            count = ""
    return "".join(out)
