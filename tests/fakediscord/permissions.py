"""Discord permission bits and the channel permission algorithm.

Only the bits a text bot cares about are named; the algorithm is Discord's
(base = @everyone | member roles; administrator or ownership = everything;
then @everyone overwrite, role overwrites, member overwrite; no View Channel
means nothing; no Send Messages also removes the bits that depend on it).
"""

from __future__ import annotations

CREATE_INSTANT_INVITE = 1 << 0
KICK_MEMBERS = 1 << 1
BAN_MEMBERS = 1 << 2
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_AUDIT_LOG = 1 << 7
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
SEND_TTS_MESSAGES = 1 << 12
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
CONNECT = 1 << 20
SPEAK = 1 << 21
CHANGE_NICKNAME = 1 << 26
MANAGE_ROLES = 1 << 28
USE_APPLICATION_COMMANDS = 1 << 31
SEND_MESSAGES_IN_THREADS = 1 << 38

ALL = (1 << 51) - 1

#: What @everyone gets in a new guild of this fake.
DEFAULT_EVERYONE = (
    CREATE_INSTANT_INVITE
    | ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | MENTION_EVERYONE
    | USE_EXTERNAL_EMOJIS
    | CONNECT
    | SPEAK
    | CHANGE_NICKNAME
    | USE_APPLICATION_COMMANDS
    | SEND_MESSAGES_IN_THREADS
)

#: The bot's own (managed) role: @everyone plus Manage Messages.
DEFAULT_BOT_ROLE = DEFAULT_EVERYONE | MANAGE_MESSAGES

#: Keyword names accepted by ``FakeDiscord.set_bot_permissions``.
NAMED = {
    "view_channel": VIEW_CHANNEL,
    "send_messages": SEND_MESSAGES,
    "embed_links": EMBED_LINKS,
    "attach_files": ATTACH_FILES,
    "add_reactions": ADD_REACTIONS,
    "manage_messages": MANAGE_MESSAGES,
    "read_message_history": READ_MESSAGE_HISTORY,
    "mention_everyone": MENTION_EVERYONE,
    "use_external_emojis": USE_EXTERNAL_EMOJIS,
}

ROLE_OVERWRITE = 0
MEMBER_OVERWRITE = 1


def compute_base(everyone: int, role_perms: list[int], *, is_owner: bool) -> int:
    """Guild-level permissions of a member."""
    if is_owner:
        return ALL
    base = everyone
    for p in role_perms:
        base |= p
    if base & ADMINISTRATOR:
        return ALL
    return base


def compute_channel(
    base: int,
    *,
    guild_id: int,
    member_id: int,
    member_roles: list[int],
    overwrites: dict[int, tuple[int, int, int]],
) -> int:
    """Apply a channel's overwrites (``{target_id: (type, allow, deny)}``) to ``base``."""
    if base & ADMINISTRATOR or base == ALL:
        return ALL
    perms = base
    ow = overwrites.get(guild_id)
    if ow is not None:
        perms = (perms & ~ow[2]) | ow[1]
    allow = deny = 0
    for role_id in member_roles:
        ow = overwrites.get(role_id)
        if ow is not None and ow[0] == ROLE_OVERWRITE:
            allow |= ow[1]
            deny |= ow[2]
    perms = (perms & ~deny) | allow
    ow = overwrites.get(member_id)
    if ow is not None and ow[0] == MEMBER_OVERWRITE:
        perms = (perms & ~ow[2]) | ow[1]
    if not perms & VIEW_CHANNEL:
        return 0
    if not perms & SEND_MESSAGES:
        perms &= ~(SEND_TTS_MESSAGES | MENTION_EVERYONE | EMBED_LINKS | ATTACH_FILES)
    return perms
