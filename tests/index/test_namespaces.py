import pytest

from index.encoder import Encoder
from index.errors import StoreError
from index.namespaces import Namespaces
from index.store import NewItem


@pytest.fixture
def spaces(tmp_path, tiny, store):
    """Per-server namespaces: folders of their own (FAISS), or one shared Milvus collection."""
    enc = Encoder(tiny)
    extra = {} if store.kind == "faiss" else {"store": "milvus", "milvus_uri": store.milvus_uri}
    ns = Namespaces(store.at(tmp_path / "libs"), enc, **extra)
    yield ns
    ns.close()
    enc.close()


def item(guild, n, h=""):
    return NewItem(source=f"discord:{guild}/1/{n}/{n}", guild_id=guild, channel_id=1,
                   message_id=n, attachment_id=n, content_hash=h)


async def test_each_namespace_sees_only_its_own_items(spaces, demo_gallery):
    a, b = spaces.get("111", create=True), spaces.get("222", create=True)
    pics = sorted(demo_gallery.glob("*.png"))
    ra = await a.add_images([item(111, i) for i in range(4)], [p.read_bytes() for p in pics[:4]])
    rb = await b.add_images([item(222, i) for i in range(3)], [p.read_bytes() for p in pics[4:7]])
    assert len(ra.ids) == 4 and len(rb.ids) == 3
    res_a = await a.search("red circle", k=50)
    res_b = await b.search("red circle", k=50)
    # every item: a result, or a near-copy shown as one (index/nearcopies.py)
    seen_a = [h.item for h in res_a.hits] + [c.item for h in res_a.hits for c in h.copies]
    seen_b = [h.item for h in res_b.hits] + [c.item for h in res_b.hits for c in h.copies]
    assert {it.guild_id for it in seen_a} == {111} and len(seen_a) == 4
    assert {it.guild_id for it in seen_b} == {222} and len(seen_b) == 3
    assert spaces.keys() == ["111", "222"]
    assert spaces.get("333") is None


async def test_duplicates_stored_once_and_bad_images_reported(spaces, demo_gallery):
    ns = spaces.get("5", create=True)
    data = (demo_gallery / "shape_000.png").read_bytes()
    report = await ns.add_images([item(5, 1), item(5, 2), item(5, 3)], [data, data, b"junk"])
    assert len(report.ids) == 1
    assert report.duplicates == ["discord:5/1/2/2"]
    assert report.failed and report.failed[0][0] == "discord:5/1/3/3"
    again = await ns.add_images([item(5, 9)], [data])
    assert again.ids == [] and again.duplicates == ["discord:5/1/9/9"]


async def test_drop_forgets_everything(spaces, demo_gallery):
    ns = spaces.get("77", create=True)
    await ns.add_images([item(77, 1)], [(demo_gallery / "shape_001.png").read_bytes()])
    assert spaces.drop("77") is True
    assert spaces.get("77") is None and not (spaces.root / "77").exists()
    assert spaces.drop("77") is False


def test_namespace_names_cannot_escape_the_root(spaces):
    for bad in ["../x", "a/b", "", "x" * 65]:
        with pytest.raises(StoreError):
            spaces.get(bad, create=True)


async def test_with_milvus_servers_share_one_collection_and_drop_only_their_own(
        tmp_path, tiny, milvus_uri, demo_gallery):
    from index.store.milvus import MilvusStore
    enc = Encoder(tiny)
    root = tmp_path / "shared_libs"
    ns = Namespaces(root, enc, store="milvus", milvus_uri=milvus_uri)
    try:
        a, b = ns.get("1", create=True), ns.get("2", create=True)
        assert a.collection.name == b.collection.name == "shared_libs"
        pics = [p.read_bytes() for p in sorted(demo_gallery.glob("*.png"))[:5]]
        await a.add_images([item(1, i) for i in range(3)], pics[:3])
        await b.add_images([item(2, i) for i in range(2)], pics[3:5])
        # the same picture in two servers is stored in each (one never sees the other's)
        again = await b.add_images([item(2, 9)], pics[:1])
        assert len(again.ids) == 1 and len(a.collection) == 3 and len(b.collection) == 3
        with pytest.raises(StoreError, match="server's id"):
            ns.get("library", create=True)
        assert ns.drop("1") is True and ns.keys() == ["2"]
        assert len(b.collection) == 3
    finally:
        ns.close()
        enc.close()
    with MilvusStore.open(milvus_uri, "shared_libs") as everything:
        assert len(everything) == 3 and {i.guild_id for i in everything.get(everything.ids())} == {2}


async def test_records_are_per_namespace_and_found_from_another_machine(
        spaces, store, tmp_path, tiny):
    """What a bot shard keeps (its library state) is in the store: a process with an empty
    root folder of its own (another machine) finds the namespaces and their records."""
    a, b = spaces.get("31", create=True), spaces.get("32", create=True)
    a.write_record("library", '{"a": 1}')
    b.write_record("library", '{"b": 2}')
    a.write_record("library", '{"a": 3}')  # written whole: the last write wins
    assert a.read_record("library") == '{"a": 3}' and b.read_record("library") == '{"b": 2}'
    assert a.read_record("nothing") is None
    with pytest.raises(StoreError, match="too large"):
        a.write_record("library", "x" * 70_000)
    if store.kind == "milvus":  # another machine: same Milvus, its own (empty) folder
        enc = Encoder(tiny)
        elsewhere = Namespaces(tmp_path / "elsewhere" / spaces.root.name, enc, store="milvus",
                               milvus_uri=store.milvus_uri)
        try:
            assert elsewhere.keys() == ["31", "32"]
            assert elsewhere.get("31").read_record("library") == '{"a": 3}'
            assert elsewhere.drop("31") is True and elsewhere.keys() == ["32"]
        finally:
            elsewhere.close()
            enc.close()
        assert spaces.keys() == ["32"]
    b.write_record("library", None)
    assert b.read_record("library") is None
