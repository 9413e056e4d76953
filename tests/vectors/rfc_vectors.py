"""Official SRTP test vectors from RFC 3711 and RFC 7714, as hex-string constants.

Each constant is a hex string you can decode with ``bytes.fromhex(...)``. Whitespace
inside a string is allowed, because ``bytes.fromhex`` skips it. Values are copied
from the RFC text and keep its grouping and letter case where that was practical.

Contents
--------
RFC 3711, Appendix B.2 "AES-CM Test Vectors"
    Session key, session salt, offset (IV), and the six listed keystream blocks
    (counters ...0000, ...0001, ...0002 and ...FEFF, ...FF00, ...FF01).

RFC 3711, Appendix B.3 "Key Derivation Test Vectors"
    Master key and salt, and index DIV kdr. For each of labels 0x00 (cipher key),
    0x02 (cipher salt) and 0x01 (auth key): the x (PRF input) value, the x*2^16
    AES-CM input block, and the derived value. The auth key is the full
    94 octets the RFC lists, with its six AES input blocks.

RFC 7714, Section 16 "Some RTP Test Vectors" (AEAD_AES_128_GCM only)
    16.1.1 Encryption, 16.1.2 Decryption, 16.1.3 Authentication Tagging
    (tag only, no encryption) and 16.1.4 Tag Verification. Constants cover the
    key, salt, IV formation, AAD, plaintext/ciphertext, H, the per-block
    keystream, GHASH, K0, the tag and the whole protected packet.
    The RFC gives no negative (authentication failure) vectors.

RFC 7714, Section 17 "RTCP Test Vectors" (AEAD_AES_128_GCM only)
    17.1 Encryption and Tagging (E=1) and 17.3 Tagging Only (E=0, the
    unencrypted-SRTCP case). Sections 17.2 and 17.4 use only AEAD_AES_256_GCM,
    so they are left out, as are the 16.2.x AES-256 vectors.

Sources and cross-checks
------------------------
* RFC 3711 B.2/B.3: copied from a full copy of the RFC 3711 text. Checked against
  a second, independent copy of Appendix B.3, and against the
  https://rfcinfo.com/rfc-3711/appendix-b rendering for the B.2 header values and
  the first four keystream blocks.
* RFC 7714 §16/§17: copied from a verbatim slice of the RFC editor's text of
  sections 16 and 17. The packets, IVs and tags were checked against several
  independent implementations' copies of the same vectors (for example, the
  Pion SRTP test suite).
* Every value a computation can reproduce was also recomputed with the Python
  ``cryptography`` package (AES-ECB/CTR/GCM), and all of them matched. The
  script used for that is not part of this module, and this module imports
  nothing.

Intermediate GHASH "partial hash" values from RFC 7714 are left out on purpose.
They are GHASH internals that the ``cryptography`` API cannot reach, so they
were not verified. Only the final GHASH is kept; it equals tag XOR K0.
"""

# ---------------------------------------------------------------------------
# RFC 3711, Appendix B.2 -- AES-CM Test Vectors
# ---------------------------------------------------------------------------
# "Keystream segment length: 1044512 octets (65282 AES blocks)"
RFC3711_B2_KEYSTREAM_SEGMENT_LENGTH_OCTETS = 1044512
RFC3711_B2_KEYSTREAM_SEGMENT_LENGTH_BLOCKS = 65282

RFC3711_B2_SESSION_KEY = "2B7E151628AED2A6ABF7158809CF4F3C"
RFC3711_B2_ROLLOVER_COUNTER = "00000000"
RFC3711_B2_SEQUENCE_NUMBER = "0000"
RFC3711_B2_SSRC = "00000000"
# The RFC prints the session salt "already shifted" (i.e. salt * 2^16), 16 octets:
RFC3711_B2_SESSION_SALT_SHIFTED = "F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"
# The 14-octet (112-bit) session salt that the line above is the shift of:
RFC3711_B2_SESSION_SALT = "F0F1F2F3F4F5F6F7F8F9FAFBFCFD"
RFC3711_B2_OFFSET = "F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"  # the IV / first counter block

# (counter block, keystream block) pairs, exactly the rows the RFC lists.
# The RFC elides the rows between ...0002 and ...FEFF with "...".
RFC3711_B2_KEYSTREAM_BLOCKS = [
    ("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000", "E03EAD0935C95E80E166B16DD92B4EB4"),
    ("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0001", "D23513162B02D0F72A43A2FE4A5F97AB"),
    ("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0002", "41E95B3BB0A2E8DD477901E4FCA894C0"),
    # ...
    ("F0F1F2F3F4F5F6F7F8F9FAFBFCFDFEFF", "EC8CDF7398607CB0F2D21675EA9EA1E4"),
    ("F0F1F2F3F4F5F6F7F8F9FAFBFCFDFF00", "362B7C3C6773516318A077D7FC5073AE"),
    ("F0F1F2F3F4F5F6F7F8F9FAFBFCFDFF01", "6A2CC3787889374FBEB4C81B17BA6C44"),
]
# Convenience: the first 48 and the last 48 octets of the keystream segment.
RFC3711_B2_KEYSTREAM_FIRST_3_BLOCKS = (
    "E03EAD0935C95E80E166B16DD92B4EB4"
    "D23513162B02D0F72A43A2FE4A5F97AB"
    "41E95B3BB0A2E8DD477901E4FCA894C0"
)
RFC3711_B2_KEYSTREAM_LAST_3_BLOCKS = (
    "EC8CDF7398607CB0F2D21675EA9EA1E4"
    "362B7C3C6773516318A077D7FC5073AE"
    "6A2CC3787889374FBEB4C81B17BA6C44"
)

# ---------------------------------------------------------------------------
# RFC 3711, Appendix B.3 -- Key Derivation Test Vectors
# ---------------------------------------------------------------------------
# AES-128 Counter Mode PRF, key_derivation_rate (kdr) = 0, initial derivation,
# so (index DIV kdr) is a six-octet string of zeros.
RFC3711_B3_MASTER_KEY = "E1F97A0D3E018BE0D64FA32C06DE4139"
RFC3711_B3_MASTER_SALT = "0EC675AD498AFEEBB6960B3AABE6"
RFC3711_B3_KEY_DERIVATION_RATE = 0
RFC3711_B3_INDEX_DIV_KDR = "000000000000"

# Cipher key (label 0x00), 16 octets.
RFC3711_B3_CIPHER_KEY_LABEL = "00"
RFC3711_B3_CIPHER_KEY_X = "0EC675AD498AFEEBB6960B3AABE6"  # x, PRF input
RFC3711_B3_CIPHER_KEY_AES_INPUT = "0EC675AD498AFEEBB6960B3AABE60000"  # x*2^16
RFC3711_B3_CIPHER_KEY = "C61E7A93744F39EE10734AFE3FF7A087"  # AES-CM output

# Cipher salt (label 0x02), 14 octets (first 14 of one 16-octet AES-CM block).
RFC3711_B3_CIPHER_SALT_LABEL = "02"
RFC3711_B3_CIPHER_SALT_X = "0EC675AD498AFEE9B6960B3AABE6"  # x, PRF input
RFC3711_B3_CIPHER_SALT_AES_INPUT = "0EC675AD498AFEE9B6960B3AABE60000"  # x*2^16
RFC3711_B3_CIPHER_SALT_AES_OUTPUT = "30CBBC08863D8C85D49DB34A9AE17AC6"  # full block
RFC3711_B3_CIPHER_SALT = "30CBBC08863D8C85D49DB34A9AE1"

# Auth key (label 0x01), the full 94 octets the RFC lists. The HMAC-SHA1
# transforms use only the first 20 octets.
RFC3711_B3_AUTH_KEY_LABEL = "01"
RFC3711_B3_AUTH_KEY_X = "0EC675AD498AFEEAB6960B3AABE6"  # x, PRF input
RFC3711_B3_AUTH_KEY_AES_INPUT = "0EC675AD498AFEEAB6960B3AABE60000"  # x*2^16
# (auth key chunk, AES input block) rows as printed in the RFC:
RFC3711_B3_AUTH_KEY_BLOCKS = [
    ("CEBE321F6FF7716B6FD4AB49AF256A15", "0EC675AD498AFEEAB6960B3AABE60000"),
    ("6D38BAA48F0A0ACF3C34E2359E6CDBCE", "0EC675AD498AFEEAB6960B3AABE60001"),
    ("E049646C43D9327AD175578EF7227098", "0EC675AD498AFEEAB6960B3AABE60002"),
    ("6371C10C9A369AC2F94A8C5FBCDDDC25", "0EC675AD498AFEEAB6960B3AABE60003"),
    ("6D6E919A48B610EF17C2041E47403576", "0EC675AD498AFEEAB6960B3AABE60004"),
    ("6B68642C59BBFC2F34DB60DBDFB2", "0EC675AD498AFEEAB6960B3AABE60005"),
]
RFC3711_B3_AUTH_KEY = (
    "CEBE321F6FF7716B6FD4AB49AF256A15"
    "6D38BAA48F0A0ACF3C34E2359E6CDBCE"
    "E049646C43D9327AD175578EF7227098"
    "6371C10C9A369AC2F94A8C5FBCDDDC25"
    "6D6E919A48B610EF17C2041E47403576"
    "6B68642C59BBFC2F34DB60DBDFB2"
)
RFC3711_B3_AUTH_KEY_LENGTH = 94

# ---------------------------------------------------------------------------
# RFC 7714, Section 16 -- Some RTP Test Vectors (common material)
# ---------------------------------------------------------------------------
# All RTP examples share one RTP packet: a 12-octet header and a 38-octet
# payload, the ASCII string "Gallia est omnis divisa in partes tres".
# Payload type 64; SEQ 0xf17b; timestamp 0x8041f8d3; SSRC 0x5501a0b2; ROC 0.
RFC7714_16_RTP_PACKET = """
    8040f17b 8041f8d3 5501a0b2 47616c6c
    69612065 7374206f 6d6e6973 20646976
    69736120 696e2070 61727465 73207472
    6573
"""
RFC7714_16_RTP_HEADER = "8040f17b 8041f8d3 5501a0b2"
RFC7714_16_RTP_PAYLOAD = """
    47616c6c 69612065 7374206f 6d6e6973 20646976
    69736120 696e2070 61727465 73207472 6573
"""
# Salt = ASCII "Quid pro quo"; 128-bit key = 00 01 02 ... 0f.
RFC7714_16_SALT = "51 75 69 64 20 70 72 6f 20 71 75 6f"
RFC7714_16_1_KEY = "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"
RFC7714_16_SSRC = "5501a0b2"
RFC7714_16_ROC = "00000000"
RFC7714_16_SEQ = "f17b"
# IV formation (Section 8.1):  | Pad |   SSRC    |    ROC    | SEQ |
RFC7714_16_IV_INPUT = "00 00 55 01 a0 b2 00 00 00 00 f1 7b"
RFC7714_16_IV = "51 75 3c 65 80 c2 72 6f 20 71 84 14"  # "All of the RTP examples use this IV."
# GHASH subkey H = AES_K(0^128) for the 128-bit key (printed in every 16.1.x example).
RFC7714_16_1_H = "c6a13b37878f5b826f4f8162a1c8d879"
# K0 = AES_K(IV || 00000001), XORed with GHASH to form the tag.
RFC7714_16_1_K0 = "92 0b 3f 40 b9 3d 2a 1d 1c 8b 5c d1 e5 67 5e aa"

# ---------------------------------------------------------------------------
# RFC 7714, Section 16.1.1 -- SRTP AEAD_AES_128_GCM Encryption
# ---------------------------------------------------------------------------
RFC7714_16_1_PLAIN_PACKET = """
    8040f17b 8041f8d3 5501a0b2 47616c6c
    69612065 7374206f 6d6e6973 20646976
    69736120 696e2070 61727465 73207472
    6573
"""
RFC7714_16_1_AAD = "8040f17b 8041f8d3 5501a0b2"
RFC7714_16_1_PT = """
    47616c6c 69612065 7374206f 6d6e6973
    20646976 69736120 696e2070 61727465
    73207472 6573
"""
RFC7714_16_1_IV = "51 75 3c 65 80 c2 72 6f 20 71 84 14"
# "Encrypt the Plaintext": (IV||blk_cntr, key_block) per block.
RFC7714_16_1_KEYSTREAM_BLOCKS = [
    ("51753c6580c2726f2071841400000002", "b5 2c 8f cf 92 55 fe 09 df ce a6 73 f0 10 22 b9"),
    ("51753c6580c2726f2071841400000003", "9e 07 52 a3 64 5a 2f 4f 2b cb d4 0a 30 b5 a5 fe"),
    ("51753c6580c2726f2071841400000004", "45 fe 4e ad ed 40 0a 5d 1a f3 63 f9 0c e1 49 3b"),
]
# "Cipher before tag appended"
RFC7714_16_1_CIPHERTEXT = """
    f24de3a3 fb34de6c acba861c 9d7e4bca
    be633bd5 0d294e6f 42a5f47a 51c7d19b
    36de3adf 8833
"""
RFC7714_16_1_GHASH = "1b 96 40 67 07 8c 40 8c 4e 44 2a 8f 01 5e 52 64"
RFC7714_16_1_TAG = "89 9d 7f 27 be b1 6a 91 52 cf 76 5e e4 39 0c ce"  # "full GMAC"
# "Cipher with tag"
RFC7714_16_1_CIPHERTEXT_WITH_TAG = """
    f24de3a3 fb34de6c acba861c 9d7e4bca
    be633bd5 0d294e6f 42a5f47a 51c7d19b
    36de3adf 8833899d 7f27beb1 6a9152cf
    765ee439 0cce
"""
# "Encrypted and tagged packet:"
RFC7714_16_1_SRTP_PACKET = """
    8040f17b 8041f8d3 5501a0b2 f24de3a3
    fb34de6c acba861c 9d7e4bca be633bd5
    0d294e6f 42a5f47a 51c7d19b 36de3adf
    8833899d 7f27beb1 6a9152cf 765ee439
    0cce
"""

# ---------------------------------------------------------------------------
# RFC 7714, Section 16.1.2 -- SRTP AEAD_AES_128_GCM Decryption
# ---------------------------------------------------------------------------
# Same key, salt, IV, AAD and H as 16.1.1. "Decrypting the following packet:"
RFC7714_16_1_2_SRTP_PACKET = """
    8040f17b 8041f8d3 5501a0b2 f24de3a3
    fb34de6c acba861c 9d7e4bca be633bd5
    0d294e6f 42a5f47a 51c7d19b 36de3adf
    8833899d 7f27beb1 6a9152cf 765ee439
    0cce
"""
RFC7714_16_1_2_AAD = "8040f17b 8041f8d3 5501a0b2"
# "CT:" (ciphertext including the 16-octet tag)
RFC7714_16_1_2_CT = """
    f24de3a3 fb34de6c acba861c 9d7e4bca
    be633bd5 0d294e6f 42a5f47a 51c7d19b
    36de3adf 8833899d 7f27beb1 6a9152cf
    765ee439 0cce
"""
RFC7714_16_1_2_RECEIVED_TAG = "899d7f27 beb16a91 52cf765e e4390cce"  # "Received tag verified."
# The RFC labels this block "Verified and tagged packet:", but it prints only the
# recovered *payload* (38 octets), without the 12-octet RTP header.
RFC7714_16_1_2_DECRYPTED_PAYLOAD = """
    47616c6c 69612065 7374206f 6d6e6973
    20646976 69736120 696e2070 61727465
    73207472 6573
"""

# ---------------------------------------------------------------------------
# RFC 7714, Section 16.1.3 -- SRTP AEAD_AES_128_GCM Authentication Tagging
# ---------------------------------------------------------------------------
# Tag-only (no encryption): the whole RTP packet is AAD and the plaintext is empty.
# Same key, salt, IV and H as 16.1.1. "Tagging the following packet:"
RFC7714_16_1_3_PLAIN_PACKET = """
    8040f17b 8041f8d3 5501a0b2 47616c6c
    69612065 7374206f 6d6e6973 20646976
    69736120 696e2070 61727465 73207472
    6573
"""
RFC7714_16_1_3_AAD = """
    8040f17b 8041f8d3 5501a0b2 47616c6c
    69612065 7374206f 6d6e6973 20646976
    69736120 696e2070 61727465 73207472
    6573
"""
RFC7714_16_1_3_GHASH = "b0 42 00 c2 6b 81 c9 8a f5 5c c2 ea fc cd 1c bc"
RFC7714_16_1_3_TAG = "22 49 3f 82 d2 bc e3 97 e9 d7 9e 3b 19 aa 42 16"  # "full GMAC"
# "Tagged packet:"
RFC7714_16_1_3_TAGGED_PACKET = """
    8040f17b 8041f8d3 5501a0b2 47616c6c
    69612065 7374206f 6d6e6973 20646976
    69736120 696e2070 61727465 73207472
    65732249 3f82d2bc e397e9d7 9e3b19aa
    4216
"""

# ---------------------------------------------------------------------------
# RFC 7714, Section 16.1.4 -- SRTP AEAD_AES_128_GCM Tag Verification
# ---------------------------------------------------------------------------
# "Verifying the following packet:" (the 16.1.3 output). The AAD is the packet
# without its tag, and CT is the tag alone.
RFC7714_16_1_4_TAGGED_PACKET = """
    8040f17b 8041f8d3 5501a0b2 47616c6c
    69612065 7374206f 6d6e6973 20646976
    69736120 696e2070 61727465 73207472
    65732249 3f82d2bc e397e9d7 9e3b19aa
    4216
"""
RFC7714_16_1_4_AAD = """
    8040f17b 8041f8d3 5501a0b2 47616c6c
    69612065 7374206f 6d6e6973 20646976
    69736120 696e2070 61727465 73207472
    6573
"""
RFC7714_16_1_4_CT = "22493f82 d2bce397 e9d79e3b 19aa4216"
RFC7714_16_1_4_RECEIVED_TAG = "22493f82 d2bce397 e9d79e3b 19aa4216"  # "Received tag verified."

# ---------------------------------------------------------------------------
# RFC 7714, Section 17 -- RTCP Test Vectors (common material)
# ---------------------------------------------------------------------------
# CAUTION: the Section 17 introduction prints this RTCP packet:
#     81c8000e 4d617273 4e545031 4e545031 52545020 0000042a 0000eb98 4c756e61
#     deadbeef deadbeef deadbeef deadbeef deadbeef
# But every vector in 17.1-17.4 encrypts or tags a *different* packet
# (81c8000d ... 4e545032 ... 0000e930 ...), which is the one below. The
# introduction's packet is kept only for reference. Do not test against it.
RFC7714_17_INTRO_RTCP_PACKET_AS_PRINTED = """
    81c8000e 4d617273 4e545031 4e545031
    52545020 0000042a 0000eb98 4c756e61
    deadbeef deadbeef deadbeef deadbeef
    deadbeef
"""
# The RTCP packet actually used in 17.1 and 17.3 ("Encrypting/Tagging the following packet").
# Its RTCP length field (0x000d, i.e. 14 words = 56 octets) does not match its real size
# (13 words = 52 octets), as the RFC prints it. So a receiver that checks the RTCP
# length field strictly will reject the decrypted packet. Feed the vectors to the
# crypto layer, not to a strict RTCP parser. (The introduction's packet above has
# the same problem: 0x000e means 60 octets, but it is 52.)
RFC7714_17_RTCP_PACKET = """
    81c8000d 4d617273 4e545031 4e545032
    52545020 0000042a 0000e930 4c756e61
    deadbeef deadbeef deadbeef deadbeef
    deadbeef
"""
RFC7714_17_KEY = "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"  # 128-bit
RFC7714_17_SALT = "51 75 69 64 20 70 72 6f 20 71 75 6f"
RFC7714_17_SSRC = "4d617273"  # ASCII "Mars"
RFC7714_17_SRTCP_INDEX = "000005d4"  # 31-bit SRTCP index
# IV formation (Section 9.1):  | Pad |   SSRC    | Pad |  0+SRTCP  |
RFC7714_17_IV_INPUT = "00 00 4d 61 72 73 00 00 00 00 05 d4"
RFC7714_17_IV = "51 75 24 05 52 03 72 6f 20 71 70 bb"
RFC7714_17_1_H = "c6a13b37878f5b826f4f8162a1c8d879"
RFC7714_17_1_K0 = "ba dc b4 24 01 d9 1e 6c b4 74 39 d1 49 86 14 6b"

# ---------------------------------------------------------------------------
# RFC 7714, Section 17.1 -- SRTCP AEAD_AES_128_GCM Encryption and Tagging (E=1)
# ---------------------------------------------------------------------------
RFC7714_17_1_KEY = "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"
RFC7714_17_1_PLAIN_PACKET = """
    81c8000d 4d617273 4e545031 4e545032
    52545020 0000042a 0000e930 4c756e61
    deadbeef deadbeef deadbeef deadbeef
    deadbeef
"""
RFC7714_17_1_IV = "51 75 24 05 52 03 72 6f 20 71 70 bb"
# AAD = first 8 octets of the RTCP packet || ESRTCP word (E=1 || SRTCP index).
RFC7714_17_1_AAD = "81c8000d 4d617273 800005d4"
RFC7714_17_1_ESRTCP_WORD = "800005d4"
RFC7714_17_1_PT = """
    4e545031 4e545032 52545020 0000042a
    0000e930 4c756e61 deadbeef deadbeef
    deadbeef deadbeef deadbeef
"""
RFC7714_17_1_KEYSTREAM_BLOCKS = [
    ("517524055203726f207170bb00000002", "2d bd 18 b4 92 8e e6 4e f5 73 87 46 2f 6b 7a b3"),
    ("517524055203726f207170bb00000003", "7f f5 29 c7 20 73 9d 4c 18 db 1b 1e ad a0 d1 35"),
    ("517524055203726f207170bb00000004", "92 4d 25 a9 58 9d 83 02 d5 14 99 b4 e0 14 78 15"),
]
# "Cipher before tag appended"
RFC7714_17_1_CIPHERTEXT = """
    63e94885 dcdab67c a727d766 2f6b7e99
    7ff5c0f7 6c06f32d c676a5f1 730d6fda
    4ce09b46 86303ded 0bb9275b
"""
RFC7714_17_1_GHASH = "72 96 10 7c 97 16 53 43 71 df c1 a3 0c 5f fe b5"
RFC7714_17_1_TAG = "c8 4a a4 58 96 cf 4d 2f c5 ab f8 72 45 d9 ea de"  # "full GMAC"
# "Cipher with tag"
RFC7714_17_1_CIPHERTEXT_WITH_TAG = """
    63e94885 dcdab67c a727d766 2f6b7e99
    7ff5c0f7 6c06f32d c676a5f1 730d6fda
    4ce09b46 86303ded 0bb9275b c84aa458
    96cf4d2f c5abf872 45d9eade
"""
# "Encrypted and tagged packet:" (header || cipher+tag || ESRTCP word)
RFC7714_17_1_SRTCP_PACKET = """
    81c8000d 4d617273 63e94885 dcdab67c
    a727d766 2f6b7e99 7ff5c0f7 6c06f32d
    c676a5f1 730d6fda 4ce09b46 86303ded
    0bb9275b c84aa458 96cf4d2f c5abf872
    45d9eade 800005d4
"""

# ---------------------------------------------------------------------------
# RFC 7714, Section 17.3 -- SRTCP AEAD_AES_128_GCM Tagging Only (E=0, unencrypted SRTCP)
# ---------------------------------------------------------------------------
RFC7714_17_3_KEY = "00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"
RFC7714_17_3_PLAIN_PACKET = """
    81c8000d 4d617273 4e545031 4e545032
    52545020 0000042a 0000e930 4c756e61
    deadbeef deadbeef deadbeef deadbeef
    deadbeef
"""
RFC7714_17_3_IV = "51 75 24 05 52 03 72 6f 20 71 70 bb"
# AAD = the whole RTCP packet || ESRTCP word (E=0 || SRTCP index); plaintext is empty.
RFC7714_17_3_AAD = """
    81c8000d 4d617273 4e545031 4e545032
    52545020 0000042a 0000e930 4c756e61
    deadbeef deadbeef deadbeef deadbeef
    deadbeef 000005d4
"""
RFC7714_17_3_ESRTCP_WORD = "000005d4"
RFC7714_17_3_H = "c6a13b37878f5b826f4f8162a1c8d879"
RFC7714_17_3_K0 = "ba dc b4 24 01 d9 1e 6c b4 74 39 d1 49 86 14 6b"
RFC7714_17_3_GHASH = "3e c1 6d 4c 3c 0e 90 a5 9e 91 be 41 5b d9 76 d8"
RFC7714_17_3_TAG = "84 1d d9 68 3d d7 8e c9 2a e5 87 90 12 5f 62 b3"  # "full GMAC"
# "Tagged packet:" (packet || tag || ESRTCP word)
RFC7714_17_3_TAGGED_PACKET = """
    81c8000d 4d617273 4e545031 4e545032
    52545020 0000042a 0000e930 4c756e61
    deadbeef deadbeef deadbeef deadbeef
    deadbeef 841dd968 3dd78ec9 2ae58790
    125f62b3 000005d4
"""
